// Unit tests of the two window functions, without the host: `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Window } from "../../guest-sdk/js/src/index.js";
import SlidingAverage from "./sliding_average.js";
import UserCounts from "./user_counts.js";

const encoder = new TextEncoder();
const window = (values, start = 0, end = 1) =>
  new Window(start, end, values.map((value) => ({ value: encoder.encode(JSON.stringify(value)) })));

test("user-counts counts each user's events", () => {
  const events = [{ user_id: "b" }, { user_id: "a" }, { user_id: "b" }, {}];
  assert.deepEqual(new UserCounts().process(window(events)), { "": 1, a: 1, b: 2 });
});

test("sliding-average averages the window and gives its span", () => {
  const average = new SlidingAverage().process(window([{ value: 10 }, { value: 20 }], 0, 10000));
  assert.deepEqual(average, { start: 0, end: 10000, count: 2, average: 15 });
});
