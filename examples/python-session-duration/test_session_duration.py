"""Unit tests of the seed's two session functions, without the host: `python -m pytest`."""

import json

from fnhost.testing import MockContext
from session_duration_function import SessionDurationFunction
from session_duration_function_managed import SessionDurationFunctionManagedState

SEED_EVENTS = [
    {"user_id": "user123", "event_type": "login", "timestamp": 1678886400},
    {"user_id": "user456", "event_type": "click", "timestamp": 1678886410},
    {"user_id": "user123", "event_type": "logout", "timestamp": 1678886420},
    {"user_id": "user123", "event_type": "login", "timestamp": 1678886500},
]

SEED_LOGS = [
    ("info", "User user123 logged in at 1678886400"),
    ("info", "User user123 session duration: 20 seconds"),
    ("info", "User user123 logged in at 1678886500"),
]


def run(function):
    context = MockContext(name="session-duration-calculator")
    outputs = [context.process(function, json.dumps(event).encode()) for event in SEED_EVENTS]
    return context, outputs


def test_managed_state_logs_the_session_and_keeps_the_open_login():
    context, outputs = run(SessionDurationFunctionManagedState())
    assert context.logs == SEED_LOGS
    assert outputs == [None] * 4
    assert context.state.get("user123") == "1678886500"


def test_in_memory_version_logs_the_same():
    function = SessionDurationFunction()
    context, _ = run(function)
    assert context.logs == SEED_LOGS
    assert function.user_sessions == {"user123": 1678886500}
    assert context.state_values == {}


def test_a_logout_without_login_is_warned_about():
    context = MockContext()
    context.process(SessionDurationFunctionManagedState(), b'{"user_id": "u2", "event_type": "logout", "timestamp": 5}')
    assert context.logs == [("warn", "User u2 logged out without a prior login.")]
