"""The component's entry point: binds a user function to the host through componentize-py.

Imported only inside a component build, where ``wit_world`` (generated from
``wit/function.wit``) exists. The build's entry module is two lines::

    import fnhost._component
    WitWorld = fnhost._component.world("module.ClassName")

or, for a window function (built for the ``window-function`` world), ``window_world``.
"""

import importlib

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import context as host
from wit_world.imports import types

from . import Context, HostFailure, InvalidArgument, LimitExceeded, NotPermitted, Window, WrongKind, _Runner

_LEVELS = {
    "trace": types.LogLevel.TRACE,
    "debug": types.LogLevel.DEBUG,
    "info": types.LogLevel.INFO,
    "warn": types.LogLevel.WARN,
    "error": types.LogLevel.ERROR,
}
_LEVEL_NAMES = {level: name for name, level in _LEVELS.items()}

_ERRORS = {
    types.ContextError_LimitExceeded: LimitExceeded,
    types.ContextError_WrongKind: WrongKind,
    types.ContextError_InvalidArgument: InvalidArgument,
    types.ContextError_NotPermitted: NotPermitted,
    types.ContextError_HostFailure: HostFailure,
}


def _refusable(call):
    """Turns the host's ``context-error`` results into :class:`fnhost.ContextError` exceptions."""

    def wrapped(*args):
        try:
            return call(*args)
        except Err as refused:
            raise _ERRORS[type(refused.value)](refused.value.value) from None

    return wrapped


class _Host:
    """The context interface as the shared :class:`fnhost.Context` expects it."""

    get_identity = staticmethod(host.get_identity)
    input_topics = staticmethod(host.input_topics)
    output_topic = staticmethod(host.output_topic)
    user_config_value = staticmethod(host.user_config_value)
    user_config_map = staticmethod(host.user_config_map)
    secret = staticmethod(host.secret)
    record_metric = staticmethod(host.record_metric)
    get_state = staticmethod(_refusable(host.get_state))
    put_state = staticmethod(_refusable(host.put_state))
    put_state_ttl = staticmethod(_refusable(host.put_state_ttl))
    list_state_keys = staticmethod(_refusable(host.list_state_keys))
    delete_state = staticmethod(_refusable(host.delete_state))
    incr_counter = staticmethod(_refusable(host.incr_counter))
    get_counter = staticmethod(_refusable(host.get_counter))
    publish = staticmethod(_refusable(host.publish))
    ack = staticmethod(host.ack)

    @staticmethod
    def log(level, message):
        host.log(_LEVELS[level], message)

    @staticmethod
    def min_log_level():
        return _LEVEL_NAMES[host.min_log_level()]


def _resolve(classname):
    module_name, _, attribute = classname.rpartition(".")
    if not module_name:
        raise ValueError(f"--classname {classname!r} must be MODULE.CLASS (for example exclamation.Exclamation)")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"--classname {classname!r}: module {module_name} has no {attribute}") from None


def world(classname):
    """The ``WitWorld`` class componentize-py exports, running the function ``classname`` names."""
    runner = _Runner(_resolve(classname))
    context = Context(_Host())

    run = runner.run
    finish = host.finish_message

    class WitWorld(wit_world.WitWorld):
        def process_batch(self, messages):
            # The operator may change the level while the function runs: ask again each batch.
            context._logger._min_rank = None
            for message in messages:
                # The WIT record has the fields of fnhost.Message, so the context reads it as it is.
                context._set_message(message)
                try:
                    outcome = Ok(run(message.value, context))
                except Exception as error:
                    outcome = Err(f"{type(error).__name__}: {error}")
                if not finish(outcome):
                    return

    return WitWorld


def window_world(classname):
    """The ``WitWorld`` class of the ``window-function`` world, running the window function
    ``classname`` names on each window."""
    runner = _Runner(_resolve(classname))
    context = Context(_Host())

    class WitWorld(wit_world.WitWorld):
        def process_window(self, window, records):
            context._logger._min_rank = None
            if records:
                # In a window function the context's message is the window's newest record.
                context._set_message(records[-1])
            try:
                return runner.run(Window(window.start, window.end, list(records)), context)
            except Exception as error:
                raise Err(f"{type(error).__name__}: {error}") from None

        def event_times(self, records):
            return [runner.event_time(record.value, record) for record in records]

    return WitWorld

