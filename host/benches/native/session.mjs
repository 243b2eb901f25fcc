// The JavaScript session-duration logic natively in node, outside the sandbox: the ceiling for
// the JavaScript guest. It runs examples/js-session-duration through the SDK's in-memory context
// over the benchmark's events and prints the seconds it took.
//
// Usage: node session.mjs MESSAGES USERS
import { MockContext } from "../../../guest-sdk/js/src/testing.js";
import SessionDuration from "../../../examples/js-session-duration/session_duration.js";

const [messages, users] = process.argv.slice(2).map(Number);
const encoder = new TextEncoder();
const events = [];
for (let i = 0; i < messages; i++) {
  const user = i % users;
  const round = Math.floor(i / users);
  const kind = round % 2 === 0 ? "login" : "logout";
  events.push(encoder.encode(`{"user_id": "user${user}", "event_type": "${kind}", "timestamp": ${1678886400 + round * 10}}`));
}
const context = new MockContext();
const started = performance.now();
let written = 0;
for (const event of events) if (context.process(SessionDuration, event) !== undefined) written += 1;
const elapsed = (performance.now() - started) / 1000;
if (written !== events.filter((_, i) => Math.floor(i / users) % 2 === 1).length) throw new Error(`wrote ${written}`);
console.log(elapsed);
