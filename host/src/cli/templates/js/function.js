// __NAME__: a session-duration function, the starting point `fnhost new` gives.
//
// Input: JSON events {"user_id": ..., "event_type": "login" | "logout" | ..., "timestamp": seconds}.
// On login it keeps the timestamp in the function's state; on logout it logs the session's
// duration, returns {"user_id": ..., "duration": ...} for the output topic and forgets the login.
//
// Run it:   fnhost localrun --js __MODULE__.js --inputs input-topic --output sessions --name __NAME__
// Test it:  node --test
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
      context.state.put(userId, String(timestamp));
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
      return { user_id: userId, duration };
    }
    return undefined;
  }
}
