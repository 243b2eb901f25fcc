// session-duration: the seed's session tracker with managed state, in JavaScript.
// Run it: fnhost localrun --js examples/js-session-duration/session_duration.js --inputs input-topic --output sessions --name session

const decoder = new TextDecoder();

export default class SessionDuration {
  process(input, context) {
    const data = decoder.decode(input);
    const log = context.getLogger();
    let record;
    try {
      record = JSON.parse(data);
    } catch {
      log.warn(`Skipping malformed record: ${data}`);
      return;
    }
    const { user_id: userId, event_type: eventType, timestamp } = record ?? {};
    if (!userId || !eventType || timestamp === undefined || timestamp === null) {
      log.warn(`Skipping malformed record: ${data}`);
      return;
    }
    if (eventType === "login") {
      context.state.put(userId, String(timestamp));
      log.info(`User ${userId} logged in at ${timestamp}`);
    } else if (eventType === "logout") {
      const login = context.state.get(userId);
      if (login === undefined) {
        log.warn(`User ${userId} logged out without a prior login.`);
        return;
      }
      const duration = timestamp - Number(login);
      log.info(`User ${userId} session duration: ${duration} seconds`);
      context.state.delete(userId);
      return { user_id: userId, duration };
    }
  }
}
