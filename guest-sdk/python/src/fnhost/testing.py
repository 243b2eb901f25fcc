"""Unit-test functions without the host: a context that keeps everything in memory.

Importing this module also makes ``import pulsar`` work as it does inside a component (unless
the real Pulsar client is installed), so copied Pulsar functions import unchanged.

>>> from fnhost import Function
>>> class Counter(Function):
...     def process(self, input, context):
...         return str(context.incr_counter(input.decode(), 1))
>>> context = MockContext()
>>> [context.process(Counter(), word) for word in (b"a", b"b", b"a")]
[b'1', b'1', b'2']
>>> context.counters
{'a': 2, 'b': 1}
"""

import importlib.util
import json
import struct
import sys
from types import SimpleNamespace
from typing import Any

from . import Context, Message, WrongKind, _Runner
from . import pulsar as _pulsar_names

# Copied Pulsar functions say `import pulsar`; inside a component that is fnhost's compatibility
# module, so tests get the same unless the real Pulsar client is installed.
if importlib.util.find_spec("pulsar") is None:
    sys.modules["pulsar"] = _pulsar_names


class MockContext(Context):
    """A :class:`fnhost.Context` whose host is in memory, with what the function did to inspect.

    ``logs`` holds ``(level, text)`` pairs, ``published`` ``(topic, value, key, properties)``
    tuples, ``metrics`` every observation by name, ``state_values`` the bytes by key and ``counters`` the
    counters by key; ``acked`` counts acknowledgements. As on the host, a message whose ``process``
    raises leaves no state change, publish or acknowledgement behind (its log lines and metrics
    stay), and the exception reaches the test. ``log_level`` is the lowest level recorded, as
    ``--log-level`` is the lowest the host writes.
    """

    def __init__(
        self,
        *,
        name: str = "function",
        tenant: str = "public",
        namespace: str = "default",
        instance_id: int = 0,
        num_instances: int = 1,
        input_topics: list[str] | None = None,
        output_topic: str | None = None,
        user_config: dict[str, Any] | None = None,
        secrets: dict[str, str] | None = None,
        log_level: str = "trace",
    ):
        self.logs: list[tuple[str, str]] = []
        self.published: list[tuple[str, bytes, str | None, dict[str, str]]] = []
        self.metrics: dict[str, list[float]] = {}
        self.state_values: dict[str, bytes] = {}
        self.counters: dict[str, int] = {}
        self.acked = 0
        self._identity_value = SimpleNamespace(
            tenant=tenant,
            namespace=namespace,
            name=name,
            function_id=f"{tenant}/{namespace}/{name}",
            function_version="0" * 64,
            instance_id=instance_id,
            num_instances=num_instances,
        )
        self._inputs = list(input_topics or [f"persistent://{tenant}/{namespace}/input"])
        self._output = output_topic
        self._config = {key: json.dumps(value) for key, value in (user_config or {}).items()}
        self._secrets = dict(secrets or {})
        self._log_level = log_level
        self._runners: dict[int, _Runner] = {}
        super().__init__(_MockHost(self))

    def process(
        self,
        function: Any,
        input: bytes,
        *,
        key: str | None = None,
        properties: dict[str, str] | None = None,
        event_time: int | None = None,
        topic: str | None = None,
        message_id: str = "0",
    ) -> bytes | None:
        """Runs ``function`` (an instance, a class or a plain function) on one message, as the host
        would, and returns the bytes it writes to the output topic (``None`` for nothing)."""
        self._set_message(
            Message(
                value=bytes(input),
                key=key,
                properties=list((properties or {}).items()),
                event_time=event_time,
                message_id=message_id,
                topic=topic or self._inputs[0],
                partition_key=key,
            )
        )
        runner = self._runners.setdefault(id(function), _Runner(function))
        before = (len(self.published), dict(self.state_values), dict(self.counters), self.acked)
        try:
            return runner.run(bytes(input), self)
        except BaseException:
            published, self.state_values, self.counters, self.acked = before
            del self.published[published:]
            raise


class _MockHost:
    """The context interface over a :class:`MockContext`'s dictionaries."""

    def __init__(self, mock: MockContext):
        self._mock = mock

    def get_identity(self):
        return self._mock._identity_value

    def input_topics(self):
        return list(self._mock._inputs)

    def output_topic(self):
        return self._mock._output

    def user_config_value(self, key):
        return self._mock._config.get(key)

    def user_config_map(self):
        return list(self._mock._config.items())

    def secret(self, name):
        return self._mock._secrets.get(name)

    def log(self, level, message):
        self._mock.logs.append((level, message))

    def min_log_level(self):
        return self._mock._log_level

    def record_metric(self, name, value):
        self._mock.metrics.setdefault(name, []).append(value)

    def get_state(self, key):
        if key in self._mock.counters:
            return struct.pack(">q", self._mock.counters[key])
        return self._mock.state_values.get(key)

    def put_state(self, key, value):
        if key in self._mock.counters:
            raise WrongKind(f"the state under {key!r} is a counter; use incr_counter")
        self._mock.state_values[key] = bytes(value)

    def delete_state(self, key):
        self._mock.state_values.pop(key, None)
        self._mock.counters.pop(key, None)

    def incr_counter(self, key, amount):
        if key in self._mock.state_values:
            raise WrongKind(f"the state under {key!r} holds bytes, not a counter")
        self._mock.counters[key] = self._mock.counters.get(key, 0) + amount
        return self._mock.counters[key]

    def get_counter(self, key):
        if key in self._mock.state_values:
            raise WrongKind(f"the state under {key!r} holds bytes, not a counter")
        return self._mock.counters.get(key, 0)

    def publish(self, topic, value, key, properties):
        self._mock.published.append((topic, bytes(value), key, dict(properties)))

    def ack(self):
        self._mock.acked += 1
