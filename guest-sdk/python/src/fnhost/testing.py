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

from . import Context, InvalidArgument, LimitExceeded, Message, WrongKind, _Runner
from . import pulsar as _pulsar_names

# Copied Pulsar functions say `import pulsar`; inside a component that is fnhost's compatibility
# module, so tests get the same unless the real Pulsar client is installed.
if importlib.util.find_spec("pulsar") is None:
    sys.modules["pulsar"] = _pulsar_names


# Ten years, as the host's limit.
_MAX_STATE_TTL_MS = 10 * 365 * 86_400_000


class MockContext(Context):
    """A :class:`fnhost.Context` whose host is in memory, with what the function did to inspect.

    ``logs`` holds ``(level, text)`` pairs, ``published`` ``(topic, value, key, properties)``
    tuples, ``metrics`` every observation by name, ``state_values`` the bytes by key and ``counters`` the
    counters by key; ``acked`` counts acknowledgements. As on the host, a message whose ``process``
    raises leaves no state change, publish or acknowledgement behind (its log lines and metrics
    stay), and the exception reaches the test. ``log_level`` is the lowest level recorded, as
    ``--log-level`` is the lowest the host writes.

    State with a time to live expires by the mock's clock, which starts at 0 and moves only when
    the test calls :meth:`advance_clock`; ``state_ttl`` (seconds) is the function's default, as
    ``--state-ttl`` is on the host. Expired keys leave ``state_values`` and ``counters``.

    >>> context = MockContext()
    >>> context.state.put("user123", "1678886400", ttl=3600)
    >>> context.advance_clock(3599); context.state.get("user123")
    '1678886400'
    >>> context.advance_clock(1); context.state.get("user123") is None
    True
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
        state_ttl: float | None = None,
    ):
        self.logs: list[tuple[str, str]] = []
        self.published: list[tuple[str, bytes, str | None, dict[str, str]]] = []
        self.metrics: dict[str, list[float]] = {}
        self.state_values: dict[str, bytes] = {}
        self.counters: dict[str, int] = {}
        self.acked = 0
        self.now_ms = 0
        self._expiries: dict[str, int] = {}
        self._state_ttl_ms = None if state_ttl is None else round(state_ttl * 1000)
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
        before = (len(self.published), dict(self.state_values), dict(self.counters), dict(self._expiries), self.acked)
        try:
            return runner.run(bytes(input), self)
        except BaseException:
            published, self.state_values, self.counters, self._expiries, self.acked = before
            del self.published[published:]
            raise

    def advance_clock(self, seconds: float) -> None:
        """Moves the mock's clock forward; state whose time to live has passed is gone."""
        self.now_ms += round(seconds * 1000)
        for key in [key for key, at in self._expiries.items() if at <= self.now_ms]:
            del self._expiries[key]
            self.state_values.pop(key, None)
            self.counters.pop(key, None)

    def _written(self, key: str, ttl_ms: int | None) -> None:
        ttl_ms = self._state_ttl_ms if ttl_ms is None else ttl_ms
        if ttl_ms is None:
            self._expiries.pop(key, None)
        else:
            self._expiries[key] = self.now_ms + ttl_ms


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
        self.put_state_ttl(key, value, None)

    def put_state_ttl(self, key, value, ttl_ms):
        if key in self._mock.counters:
            raise WrongKind(f"the state under {key!r} is a counter; use incr_counter")
        if ttl_ms is not None and not 1 <= ttl_ms <= _MAX_STATE_TTL_MS:
            raise InvalidArgument(f"a time to live of {ttl_ms} ms is out of range: give from 1 ms to ten years (MAX_STATE_TTL_MS)")
        self._mock.state_values[key] = bytes(value)
        self._mock._written(key, ttl_ms)

    def list_state_keys(self, prefix, after, limit):
        if not 1 <= limit <= 1000:
            raise LimitExceeded(f"a page of {limit} keys was asked for; give from 1 to 1000 (MAX_STATE_KEYS_LISTED)")
        keys = sorted({*self._mock.state_values, *self._mock.counters}, key=lambda key: key.encode())
        keys = [key for key in keys if key.startswith(prefix) and (after is None or key.encode() > after.encode())]
        return keys[:limit]

    def delete_state(self, key):
        self._mock.state_values.pop(key, None)
        self._mock.counters.pop(key, None)
        self._mock._expiries.pop(key, None)

    def incr_counter(self, key, amount):
        if key in self._mock.state_values:
            raise WrongKind(f"the state under {key!r} holds bytes, not a counter")
        self._mock.counters[key] = self._mock.counters.get(key, 0) + amount
        self._mock._written(key, None)
        return self._mock.counters[key]

    def get_counter(self, key):
        if key in self._mock.state_values:
            raise WrongKind(f"the state under {key!r} holds bytes, not a counter")
        return self._mock.counters.get(key, 0)

    def publish(self, topic, value, key, properties):
        self._mock.published.append((topic, bytes(value), key, dict(properties)))

    def ack(self):
        self._mock.acked += 1
