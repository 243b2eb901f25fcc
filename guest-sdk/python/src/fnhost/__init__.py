"""Write fnhost functions in Python.

A function is a class with a ``process(self, input, context)`` method, as in Pulsar Functions.
``input`` is the message's payload as ``bytes``; the value returned goes to the output topic
(``None`` writes nothing). The context reaches state, logging, publishing, configuration and
metrics, under Pulsar's names:

>>> from fnhost import Function
>>> class Exclamation(Function):
...     def process(self, input, context):
...         context.get_logger().info("got %d bytes", len(input))
...         return input.decode() + "!"

Run it with ``fnhost localrun --py exclamation.py --classname exclamation.Exclamation``; fnhost
builds the WebAssembly component itself. Unit-test it without the host through
:class:`fnhost.testing.MockContext`:

>>> from fnhost.testing import MockContext
>>> context = MockContext()
>>> context.process(Exclamation(), b"hi")
b'hi!'
>>> context.logs
[('info', 'got 2 bytes')]
"""

import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

__all__ = [
    "Function",
    "Context",
    "Message",
    "Window",
    "State",
    "Logger",
    "ContextError",
    "LimitExceeded",
    "WrongKind",
    "InvalidArgument",
    "NotPermitted",
    "HostFailure",
    "encode_output",
]


class Function:
    """The base class of a function (Pulsar's ``pulsar.Function``).

    Subclasses override :meth:`process`. One object is created per instance, before the first
    message, and kept for the instance's life, so attributes are in-memory state (lost on a
    restart; use ``context.state`` or ``context.put_state`` for state that must survive).
    """

    def process(self, input: bytes, context: "Context") -> Any:
        """Processes one message; the value returned goes to the output topic.

        >>> Function().process(b"x", None)
        Traceback (most recent call last):
        NotImplementedError: a function overrides process(self, input, context)
        """
        raise NotImplementedError("a function overrides process(self, input, context)")


class ContextError(Exception):
    """A context call the host refused; the function may handle it or let the message fail.

    >>> issubclass(LimitExceeded, ContextError)
    True
    """


class LimitExceeded(ContextError):
    """A named limit was hit (key length, value size, publishes per message, ...)."""


class WrongKind(ContextError):
    """The key holds a value of another kind (a counter where bytes were expected, or the reverse)."""


class InvalidArgument(ContextError):
    """The argument is not acceptable (for example a malformed topic name)."""


class NotPermitted(ContextError):
    """The function may not do this (for example publish to a topic it may not reach)."""


class HostFailure(ContextError):
    """The host could not serve the call (its storage failed); nothing the function did is wrong.

    The message fails and is tried again whatever the function returns, so there is nothing to handle.
    """


@dataclass
class Message:
    """The message being processed (Pulsar's ``Record``).

    >>> Message(value=b"v").key is None
    True
    """

    value: bytes
    key: str | None = None
    properties: list[tuple[str, str]] = field(default_factory=list)
    event_time: int | None = None
    publish_time: int = 0
    message_id: str = "0"
    topic: str = "persistent://public/default/input"
    partition_key: str | None = None


@dataclass
class Window:
    """The records of a window that fired, oldest first, and its span in milliseconds since the
    Unix epoch: time windows cover ``[start, end)``; a count window starts at its first record's
    time and ends just after its last one's.

    A window function is a class with ``process(self, window, context)`` (or a function taking
    ``(window, context)``) built with window settings such as ``--window-length-count``; what it
    returns goes to the output topic, as for a message. Under ``--event-time``, a class may also
    have ``event_time(self, value, message)``, returning a record's event time in milliseconds
    read from its value, or ``None`` for the event time the producer gave.

    >>> window = Window(0, 10_000, [Message(value=b"3"), Message(value=b"4")])
    >>> sum(int(value) for value in window.values)
    7
    """

    start: int
    end: int
    records: list[Message] = field(default_factory=list)

    @property
    def values(self) -> list[bytes]:
        """The records' values, oldest first."""
        return [record.value for record in self.records]


def _to_bytes(value: str | bytes | bytearray | memoryview, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def encode_output(value: Any) -> bytes | None:
    """The bytes written to the output topic for a value ``process`` returned.

    ``None`` writes nothing; ``bytes`` are written as they are and ``str`` as UTF-8; ``dict`` and
    ``list`` as JSON; numbers and booleans as their text (Pulsar's default serde).

    >>> encode_output({"user_id": "u", "duration": 20})
    b'{"user_id": "u", "duration": 20}'
    >>> encode_output(None) is None
    True
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return _to_bytes(value, "the output")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value).encode("utf-8")
    if isinstance(value, (bool, int, float)):
        return str(value).encode("utf-8")
    raise TypeError(
        f"process returned a {type(value).__name__}; return str, bytes, a dict or list (written as JSON), a number or None"
    )


_LEVEL_RANKS = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4}


class Logger:
    """The function's logger (``context.get_logger()``), shaped like :mod:`logging`'s.

    Messages are formatted with ``%`` and the arguments, as :mod:`logging` does, and only when
    the host writes lines at their level (``--log-level``).
    """

    def __init__(self, host: Any):
        self._host = host
        self._min_rank: int | None = None

    def is_enabled_for(self, level: str) -> bool:
        """Whether lines at ``level`` (``"debug"``, ``"info"``, ``"warn"``, ``"error"``) are written.

        >>> from fnhost.testing import MockContext
        >>> logger = MockContext(log_level="info").get_logger()
        >>> logger.is_enabled_for("debug"), logger.is_enabled_for("warn")
        (False, True)
        """
        if self._min_rank is None:
            self._min_rank = _LEVEL_RANKS[self._host.min_log_level()]
        return _LEVEL_RANKS[level] >= self._min_rank

    def _log(self, level: str, message: Any, args: tuple) -> None:
        if self.is_enabled_for(level):
            self._host.log(level, str(message) % args if args else str(message))

    def debug(self, message: Any, *args: Any) -> None:
        """Logs at debug level."""
        self._log("debug", message, args)

    def info(self, message: Any, *args: Any) -> None:
        """Logs at info level."""
        self._log("info", message, args)

    def warning(self, message: Any, *args: Any) -> None:
        """Logs at warn level."""
        self._log("warn", message, args)

    warn = warning

    def error(self, message: Any, *args: Any) -> None:
        """Logs at error level."""
        self._log("error", message, args)

    critical = error
    exception = error


_KEYS_PER_PAGE = 1000


def _ttl_ms(ttl: float | timedelta) -> int:
    """A time to live in whole milliseconds, from seconds or a timedelta."""
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    return max(0, round(seconds * 1000))


def _put(host: Any, key: str, value: str | bytes, ttl: float | timedelta | None) -> None:
    data = _to_bytes(value, "a state value")
    if ttl is None:
        host.put_state(key, data)
    else:
        host.put_state_ttl(key, data, _ttl_ms(ttl))


class State:
    """The function's durable key-value state as text (``context.state``), as in the seed.

    ``put`` takes ``str`` or ``bytes``; ``get`` returns ``str`` (UTF-8), or ``None`` when the key
    is absent. ``context.get_state`` returns the raw bytes instead.

    >>> from fnhost.testing import MockContext
    >>> state = MockContext().state
    >>> state.put("user123", "1678886400")
    >>> state.get("user123"), "user123" in state
    ('1678886400', True)
    >>> state.delete("user123"); state.get("user123") is None
    True
    """

    def __init__(self, host: Any):
        self._host = host

    def put(self, key: str, value: str | bytes, ttl: float | timedelta | None = None) -> None:
        """Stores ``value`` under ``key``; durable when the message's effects commit.

        With ``ttl`` (seconds, or a :class:`datetime.timedelta`) the key expires that long after
        the commit: it then reads as absent, and the host deletes it. Writing it again before then
        gives it a new life. Without, the function's ``--state-ttl`` applies, if it has one.
        """
        _put(self._host, key, value, ttl)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix``, in byte order, fetched a page at a time;
        expired keys are left out.

        >>> from fnhost.testing import MockContext
        >>> state = MockContext().state
        >>> for user in ("ann", "bob"):
        ...     state.put(f"session/{user}", "1")
        >>> list(state.keys("session/"))
        ['session/ann', 'session/bob']
        """
        after = None
        while True:
            page = self.list_keys(prefix, after=after, limit=_KEYS_PER_PAGE)
            yield from page
            if len(page) < _KEYS_PER_PAGE:
                return
            after = page[-1]

    def list_keys(self, prefix: str = "", *, after: str | None = None, limit: int = 100) -> list[str]:
        """One page of the keys that start with ``prefix``: those after ``after`` (exclusive), at
        most ``limit`` (1 to 1,000; more raises :class:`LimitExceeded`)."""
        return list(self._host.list_state_keys(prefix, after, int(limit)))

    def get(self, key: str, default: str | None = None) -> str | None:
        """The text under ``key``, or ``default``."""
        value = self._host.get_state(key)
        if value is None:
            return default
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise WrongKind(f"the state under {key!r} is not UTF-8 text; read it with context.get_state") from None

    def delete(self, key: str) -> None:
        """Removes ``key``; an absent key is not an error."""
        self._host.delete_state(key)

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: str | bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._host.get_state(key) is not None


class Context:
    """What a function reaches while it processes a message: Pulsar's context, in Python.

    The host calls go through ``host``, an object with the functions of ``wit/function.wit``'s
    ``context`` interface; inside a component it is the host itself, in tests a mock.
    """

    def __init__(self, host: Any, message: Message | None = None):
        self._host = host
        self._message = message or Message(value=b"")
        self._identity = None
        self.state = State(host)
        self._logger = Logger(host)

    def _set_message(self, message: Message) -> None:
        self._message = message

    def _who(self) -> Any:
        if self._identity is None:
            self._identity = self._host.get_identity()
        return self._identity

    # The message.
    def get_message_id(self) -> str:
        """The message's identity within its topic, stable across redeliveries."""
        return self._message.message_id

    def get_message_key(self) -> str | None:
        """The message's key, or ``None``."""
        return self._message.key

    def get_partition_key(self) -> str | None:
        """The key that chose the message's key-shared consumer, or ``None``."""
        return self._message.partition_key

    def get_message_eventtime(self) -> int | None:
        """When the event happened (ms since the epoch), if the producer said."""
        return self._message.event_time

    def get_message_publish_time(self) -> int:
        """When the message was appended to its topic (ms since the epoch)."""
        return self._message.publish_time

    def get_message_properties(self) -> dict[str, str]:
        """The message's properties."""
        return dict(self._message.properties)

    def get_current_message_topic_name(self) -> str:
        """The fully qualified name of the topic the message came from."""
        return self._message.topic

    # The function.
    def get_function_name(self) -> str:
        """The function's name."""
        return self._who().name

    def get_function_tenant(self) -> str:
        """The function's tenant."""
        return self._who().tenant

    def get_function_namespace(self) -> str:
        """The function's namespace."""
        return self._who().namespace

    def get_function_id(self) -> str:
        """A stable identifier of the function."""
        return self._who().function_id

    def get_function_version(self) -> str:
        """The SHA-256 of the function's component."""
        return self._who().function_version

    def get_instance_id(self) -> int:
        """This instance's number, from 0."""
        return self._who().instance_id

    def get_num_instances(self) -> int:
        """How many instances of the function run."""
        return self._who().num_instances

    def get_input_topics(self) -> list[str]:
        """The fully qualified names of the input topics."""
        return list(self._host.input_topics())

    def get_output_topic(self) -> str | None:
        """The output topic, if any."""
        return self._host.output_topic()

    # Configuration.
    def get_user_config_value(self, key: str) -> Any:
        """One value of ``--user-config`` (decoded from JSON), or ``None``."""
        text = self._host.user_config_value(key)
        return None if text is None else json.loads(text)

    def get_user_config_map(self) -> dict[str, Any]:
        """The whole user config, each value decoded from JSON."""
        return {key: json.loads(text) for key, text in self._host.user_config_map()}

    def get_secret(self, secret_name: str) -> str | None:
        """A secret the operator gave the function, or ``None``."""
        return self._host.secret(secret_name)

    # Logging and metrics.
    def get_logger(self) -> Logger:
        """The function's logger."""
        return self._logger

    def record_metric(self, metric_name: str, metric_value: float) -> None:
        """Records one observation of a user metric."""
        self._host.record_metric(metric_name, float(metric_value))

    # State.
    def put_state(self, key: str, value: str | bytes, ttl: float | timedelta | None = None) -> None:
        """Stores ``value`` (bytes, or str as UTF-8) under ``key``; with ``ttl`` (seconds, or a
        timedelta) it expires that long after the commit (see :meth:`State.put`)."""
        _put(self._host, key, value, ttl)

    def get_state(self, key: str) -> bytes | None:
        """The bytes under ``key``, or ``None``."""
        return self._host.get_state(key)

    def del_state(self, key: str) -> None:
        """Removes ``key``."""
        self._host.delete_state(key)

    def incr_counter(self, key: str, amount: int) -> int:
        """Adds ``amount`` to the counter ``key`` and returns its new value."""
        return self._host.incr_counter(key, int(amount))

    def get_counter(self, key: str) -> int:
        """The counter ``key`` (0 when absent)."""
        return self._host.get_counter(key)

    def del_counter(self, key: str) -> None:
        """Removes the counter ``key``."""
        self._host.delete_state(key)

    # Output.
    def publish(
        self,
        topic_name: str,
        message: str | bytes,
        serde_class_name: str | None = None,
        properties: dict[str, str] | None = None,
        compression_type: Any = None,
        callback: Any = None,
        message_conf: dict[str, Any] | None = None,
    ) -> None:
        """Publishes ``message`` to ``topic_name`` when this message's effects commit.

        Pulsar's signature: ``serde_class_name`` must be absent or an identity serde, and
        ``compression_type`` is ignored (the embedded store does not compress).
        ``message_conf`` may carry ``partition_key`` (or ``key``) as the new message's key.
        """
        if serde_class_name not in (None, "serde.IdentitySerDe", "pulsar.functions.serde.IdentitySerDe"):
            raise InvalidArgument(f"serde {serde_class_name!r} is not supported; pass str or bytes")
        if callback is not None:
            raise InvalidArgument("publish takes no callback: the message is written when this message's effects commit")
        conf = message_conf or {}
        key = conf.get("partition_key", conf.get("key"))
        pairs = [(str(name), str(value)) for name, value in (properties or {}).items()]
        self._host.publish(topic_name, _to_bytes(message, "a published message"), key, pairs)

    def ack(self) -> None:
        """Acknowledges the message (for ``--processing-guarantees MANUAL``)."""
        self._host.ack()


def _as_callable(target: Any) -> Any:
    """What is called per message: the ``process`` of a class's instance or of an object, or a
    plain function."""
    if isinstance(target, type):
        target = target()
        if not callable(getattr(target, "process", None)):
            raise TypeError(f"{type(target).__name__} has no process(self, input, context) method")
    if callable(getattr(target, "process", None)):
        return target.process
    if callable(target):
        return target
    raise TypeError(f"{target!r} is neither a class with process(self, input, context) nor a function")


def _takes_context(function: Any) -> bool:
    """Whether a plain function takes ``(input, context)`` rather than ``(input)``, as Pulsar allows."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) != 1 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


class _Runner:
    """Calls a user function with Pulsar's conventions; shared by the component and the mock."""

    def __init__(self, target: Any):
        self._target = target
        self._call = None
        self._with_context = True

    def _callable(self) -> Any:
        if self._call is None:
            self._call = _as_callable(self._target)
            self._with_context = _takes_context(self._call)
        return self._call

    def run(self, input: Any, context: Context) -> bytes | None:
        call = self._callable()
        result = call(input, context) if self._with_context else call(input)
        return encode_output(result)

    def event_time(self, value: bytes, message: Any) -> int | None:
        """A window function's ``event_time(value, message)``, if its object has one: the record's
        event time in milliseconds, read from it (Pulsar's timestamp extractor); else ``None``."""
        extract = getattr(getattr(self._callable(), "__self__", None), "event_time", None)
        return extract(value, message) if callable(extract) else None
