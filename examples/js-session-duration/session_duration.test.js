// Unit tests of the session-duration function, without the host: `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockContext } from "../../guest-sdk/js/src/testing.js";
import SessionDuration from "./session_duration.js";

const SEED_EVENTS = [
  { user_id: "user123", event_type: "login", timestamp: 1678886400 },
  { user_id: "user456", event_type: "click", timestamp: 1678886410 },
  { user_id: "user123", event_type: "logout", timestamp: 1678886420 },
  { user_id: "user123", event_type: "login", timestamp: 1678886500 },
];

test("the seed's events give the seed's logs and one session", () => {
  const context = new MockContext({ name: "session-duration-calculator" });
  const outputs = SEED_EVENTS.map((event) => context.process(SessionDuration, JSON.stringify(event)));
  assert.deepEqual(context.logs, [
    ["info", "User user123 logged in at 1678886400"],
    ["info", "User user123 session duration: 20 seconds"],
    ["info", "User user123 logged in at 1678886500"],
  ]);
  const written = outputs.filter((output) => output !== undefined).map((output) => new TextDecoder().decode(output));
  assert.deepEqual(written, ['{"user_id":"user123","duration":20}']);
  assert.equal(context.state.get("user123"), "1678886500");
});

test("malformed records are warned about and skipped", () => {
  const context = new MockContext();
  assert.equal(context.process(SessionDuration, "not json"), undefined);
  assert.deepEqual(context.logs, [["warn", "Skipping malformed record: not json"]]);
});
