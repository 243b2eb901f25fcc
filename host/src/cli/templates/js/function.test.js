// Unit tests of __NAME__ without the host: `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockContext } from "./fnhost/testing.js";
import __CLASS__ from "./__MODULE__.js";

const EVENTS = [
  { user_id: "user123", event_type: "login", timestamp: 1678886400 },
  { user_id: "user456", event_type: "click", timestamp: 1678886410 },
  { user_id: "user123", event_type: "logout", timestamp: 1678886420 },
];

test("a logout writes the session duration and forgets the login", () => {
  const context = new MockContext();
  const outputs = EVENTS.map((event) => context.process(__CLASS__, JSON.stringify(event)));
  assert.equal(new TextDecoder().decode(outputs[2]), '{"user_id":"user123","duration":20}');
  assert.deepEqual(context.logs.at(-1), ["info", "User user123 session duration: 20 seconds"]);
  assert.equal(context.state.get("user123"), undefined);
});

test("malformed records are skipped", () => {
  const context = new MockContext();
  assert.equal(context.process(__CLASS__, "not json"), undefined);
  assert.deepEqual(context.logs, [["warn", "Skipping malformed record: not json"]]);
});
