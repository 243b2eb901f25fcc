"""__NAME__: a session-duration function, the starting point `fnhost new` gives.

Input: JSON events {"user_id": ..., "event_type": "login" | "logout" | ..., "timestamp": seconds}.
On login it keeps the timestamp in the function's state for a day (a login that no logout follows
is then forgotten); on logout it logs the session's duration, returns
{"user_id": ..., "duration": ..., "took": "1 hour 5 minutes"} for the output topic and forgets the login.
It uses a third-party package, python-dateutil (requirements.txt), which fnhost installs into the
component when it builds it.

Set up:   python -m pip install -r requirements.txt
Run it:   fnhost localrun --py __MODULE__.py --classname __MODULE__.__CLASS__ --inputs input-topic --output sessions --name __NAME__
Test it:  python -m pytest
"""

import json
from datetime import timedelta

from dateutil.relativedelta import relativedelta

from fnhost import Function

# How long a login waits for its logout.
LOGIN_TTL = timedelta(days=1)


def describe(seconds):
    """A duration in words: 3900 -> '1 hour 5 minutes'."""
    span = relativedelta(seconds=seconds).normalized()
    parts = [(span.days, "day"), (span.hours, "hour"), (span.minutes, "minute"), (span.seconds, "second")]
    words = [f"{count} {unit}{'s' if count != 1 else ''}" for count, unit in parts if count]
    return " ".join(words) or "0 seconds"


class __CLASS__(Function):
    def process(self, input, context):
        log = context.get_logger()
        try:
            event = json.loads(input)
        except ValueError:
            log.warn("Skipping malformed record: %s", input.decode("utf-8", "replace"))
            return None
        user_id, event_type, timestamp = event.get("user_id"), event.get("event_type"), event.get("timestamp")
        if not user_id or not event_type or timestamp is None:
            log.warn("Skipping malformed record: %s", input.decode("utf-8", "replace"))
            return None
        if event_type == "login":
            context.state.put(user_id, str(timestamp), ttl=LOGIN_TTL)
            log.info("User %s logged in at %s", user_id, timestamp)
        elif event_type == "logout":
            login = context.state.get(user_id)
            if login is None:
                log.warn("User %s logged out without a prior login.", user_id)
                return None
            duration = timestamp - int(login)
            log.info("User %s session duration: %s seconds", user_id, duration)
            context.state.delete(user_id)
            return {"user_id": user_id, "duration": duration, "took": describe(duration)}
        return None
