"""The Python session-duration logic natively in CPython, outside the sandbox: the ceiling for the
Python guest. It runs `fnhost new`'s Python template through the SDK's in-memory context over
the benchmark's events and prints the seconds it took.

Usage: PYTHONPATH=guest-sdk/python/src python3 session.py TEMPLATE.py MESSAGES USERS
"""

import importlib.util
import sys
import time

from fnhost.testing import MockContext

template, messages, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = importlib.util.spec_from_file_location("session", template)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
events = []
for i in range(messages):
    user, round_ = i % users, i // users
    kind = "login" if round_ % 2 == 0 else "logout"
    text = f'{{"user_id": "user{user}", "event_type": "{kind}", "timestamp": {1678886400 + round_ * 10}}}'
    events.append(text.encode())
context = MockContext()
function = module.Session()
started = time.perf_counter()
written = sum(context.process(function, event) is not None for event in events)
elapsed = time.perf_counter() - started
assert written == sum(1 for i in range(messages) if (i // users) % 2 == 1), written
print(elapsed)
