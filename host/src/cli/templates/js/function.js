// __NAME__: a session-duration function, the starting point `fnhost new` gives.
//
// Input: JSON events {"user_id": ..., "event_type": "login" | "logout" | ..., "timestamp": seconds}.
// On login it keeps the timestamp in the function's state for a day (a login that no logout
// follows is then forgotten); on logout it logs the session's duration, returns
// {"user_id": ..., "duration": ..., "took": "1 hour 5 minutes"} for the output topic and forgets
// the login. It uses a third-party package, date-fns (package.json), which fnhost bundles into the
// component when it builds it.
//
// Set up:   npm install
// Run it:   fnhost localrun --js __MODULE__.js --inputs input-topic --output sessions --name __NAME__
// Test it:  node --test
import { formatDuration, intervalToDuration } from "date-fns";

// How long a login waits for its logout, in milliseconds.
const LOGIN_TTL = 24 * 60 * 60 * 1000;

/** A duration in words: 3900 -> "1 hour 5 minutes". */
export function describe(seconds) {
  return formatDuration(intervalToDuration({ start: 0, end: seconds * 1000 })) || "0 seconds";
}

export default class __CLASS__ {
  process(input, context) {
    const data = new TextDecoder().decode(input);
    const log = context.getLogger();
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      log.warn(`Skipping malformed record: ${data}`);
      return undefined;
    }
    const { user_id: userId, event_type: eventType, timestamp } = event ?? {};
    if (!userId || !eventType || timestamp === undefined || timestamp === null) {
      log.warn(`Skipping malformed record: ${data}`);
      return undefined;
    }
    if (eventType === "login") {
      context.state.put(userId, String(timestamp), { ttl: LOGIN_TTL });
      log.info(`User ${userId} logged in at ${timestamp}`);
    } else if (eventType === "logout") {
      const login = context.state.get(userId);
      if (login === undefined) {
        log.warn(`User ${userId} logged out without a prior login.`);
        return undefined;
      }
      const duration = timestamp - Number(login);
      log.info(`User ${userId} session duration: ${duration} seconds`);
      context.state.delete(userId);
      return { user_id: userId, duration, took: describe(duration) };
    }
    return undefined;
  }
}
