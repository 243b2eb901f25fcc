"""Unit tests of __NAME__ without the host: `python -m pytest`."""

import json

from fnhost.testing import MockContext
from __MODULE__ import __CLASS__

EVENTS = [
    {"user_id": "user123", "event_type": "login", "timestamp": 1678886400},
    {"user_id": "user456", "event_type": "click", "timestamp": 1678886410},
    {"user_id": "user123", "event_type": "logout", "timestamp": 1678886420},
]


def test_a_logout_writes_the_session_duration_and_forgets_the_login():
    context = MockContext()
    outputs = [context.process(__CLASS__(), json.dumps(event).encode()) for event in EVENTS]
    assert outputs == [None, None, b'{"user_id": "user123", "duration": 20}']
    assert context.logs[-1] == ("info", "User user123 session duration: 20 seconds")
    assert context.state.get("user123") is None


def test_malformed_records_are_skipped():
    context = MockContext()
    assert context.process(__CLASS__(), b"not json") is None
    assert context.logs == [("warn", "Skipping malformed record: not json")]
