"""Unit tests of __NAME__ without the host: `python -m pytest`."""

import json

from fnhost.testing import MockContext
from __MODULE__ import __CLASS__, describe

EVENTS = [
    {"user_id": "user123", "event_type": "login", "timestamp": 1678886400},
    {"user_id": "user456", "event_type": "click", "timestamp": 1678886410},
    {"user_id": "user123", "event_type": "logout", "timestamp": 1678886420},
]


def test_a_logout_writes_the_session_duration_and_forgets_the_login():
    context = MockContext()
    outputs = [context.process(__CLASS__(), json.dumps(event).encode()) for event in EVENTS]
    assert outputs == [None, None, b'{"user_id": "user123", "duration": 20, "took": "20 seconds"}']
    assert context.logs[-1] == ("info", "User user123 session duration: 20 seconds")
    assert context.state.get("user123") is None


def test_malformed_records_are_skipped():
    context = MockContext()
    assert context.process(__CLASS__(), b"not json") is None
    assert context.logs == [("warn", "Skipping malformed record: not json")]


def test_durations_are_described_in_words():
    assert [describe(seconds) for seconds in (0, 1, 3900, 90061)] == [
        "0 seconds",
        "1 second",
        "1 hour 5 minutes",
        "1 day 1 hour 1 minute 1 second",
    ]


def test_a_login_without_a_logout_is_forgotten_after_a_day():
    context = MockContext()
    context.process(__CLASS__(), json.dumps(EVENTS[0]).encode())
    context.advance_clock(24 * 3600)
    assert context.state.get("user123") is None
