// Unit tests of __NAME__ without the host: `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockContext } from "./fnhost/testing.js";
import __CLASS__, { describe } from "./__MODULE__.js";

const EVENTS = [
  { user_id: "user123", event_type: "login", timestamp: 1678886400 },
  { user_id: "user456", event_type: "click", timestamp: 1678886410 },
  { user_id: "user123", event_type: "logout", timestamp: 1678886420 },
];

test("a logout writes the session duration and forgets the login", () => {
  const context = new MockContext();
  const outputs = EVENTS.map((event) => context.process(__CLASS__, JSON.stringify(event)));
  assert.equal(new TextDecoder().decode(outputs[2]), '{"user_id":"user123","duration":20,"took":"20 seconds"}');
  assert.deepEqual(context.logs.at(-1), ["info", "User user123 session duration: 20 seconds"]);
  assert.equal(context.state.get("user123"), undefined);
});

test("malformed records are skipped", () => {
  const context = new MockContext();
  assert.equal(context.process(__CLASS__, "not json"), undefined);
  assert.deepEqual(context.logs, [["warn", "Skipping malformed record: not json"]]);
});

test("durations are described in words", () => {
  assert.deepEqual([0, 1, 3900, 90061].map(describe), ["0 seconds", "1 second", "1 hour 5 minutes", "1 day 1 hour 1 minute 1 second"]);
});

test("a login without a logout is forgotten after a day", () => {
  const context = new MockContext();
  context.process(__CLASS__, JSON.stringify(EVENTS[0]));
  context.advanceClock(24 * 60 * 60 * 1000);
  assert.equal(context.state.get("user123"), undefined);
});
