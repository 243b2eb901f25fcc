"""The SDK's context, runner and mock, as a function author meets them."""

import pytest

import fnhost
from fnhost import Function, InvalidArgument, WrongKind, encode_output
from fnhost.testing import MockContext


class Echo(Function):
    def __init__(self):
        self.seen = 0

    def process(self, input, context):
        self.seen += 1
        return input


def test_one_object_per_instance_keeps_its_attributes_between_messages():
    context = MockContext()
    function = Echo()
    for value in (b"a", b"b", b"c"):
        assert context.process(function, value) == value
    assert function.seen == 3


def test_a_class_is_instantiated_once_and_plain_functions_work_with_or_without_context():
    context = MockContext()
    assert [context.process(Echo, b"x") for _ in range(2)] == [b"x", b"x"]
    assert context.process(lambda input: input.upper(), b"up") == b"UP"
    assert context.process(lambda input, ctx: ctx.get_function_name(), b"") == b"function"


@pytest.mark.parametrize(
    "value, written",
    [
        (None, None),
        ("text", b"text"),
        (b"\x00\xff", b"\x00\xff"),
        (bytearray(b"ba"), b"ba"),
        ({"a": 1}, b'{"a": 1}'),
        ([1, 2], b"[1, 2]"),
        (42, b"42"),
        (True, b"True"),
    ],
)
def test_returned_values_are_written_as_pulsar_writes_them(value, written):
    assert encode_output(value) == written


def test_an_unwritable_return_value_says_what_to_return():
    with pytest.raises(TypeError, match="return str, bytes"):
        encode_output(object())


def test_message_identity_and_config_under_pulsar_names():
    context = MockContext(
        name="f",
        tenant="t",
        namespace="n",
        instance_id=2,
        num_instances=3,
        input_topics=["persistent://t/n/in"],
        output_topic="persistent://t/n/out",
        user_config={"threshold": 5, "label": "x"},
        secrets={"token": "s3cret"},
    )

    def inspect(input, context):
        return {
            "id": context.get_message_id(),
            "key": context.get_message_key(),
            "eventtime": context.get_message_eventtime(),
            "properties": context.get_message_properties(),
            "topic": context.get_current_message_topic_name(),
            "fqfn": [context.get_function_tenant(), context.get_function_namespace(), context.get_function_name()],
            "instance": [context.get_instance_id(), context.get_num_instances()],
            "inputs": context.get_input_topics(),
            "output": context.get_output_topic(),
            "threshold": context.get_user_config_value("threshold"),
            "absent": context.get_user_config_value("absent"),
            "config": context.get_user_config_map(),
            "secret": context.get_secret("token"),
        }

    import json

    seen = json.loads(context.process(inspect, b"", key="k", properties={"p": "v"}, event_time=7, message_id="3"))
    assert seen == {
        "id": "3",
        "key": "k",
        "eventtime": 7,
        "properties": {"p": "v"},
        "topic": "persistent://t/n/in",
        "fqfn": ["t", "n", "f"],
        "instance": [2, 3],
        "inputs": ["persistent://t/n/in"],
        "output": "persistent://t/n/out",
        "threshold": 5,
        "absent": None,
        "config": {"threshold": 5, "label": "x"},
        "secret": "s3cret",
    }


def test_state_counters_and_their_kinds():
    context = MockContext()
    context.put_state("k", "v")
    assert context.get_state("k") == b"v"
    assert context.state["k"] == "v"
    assert context.incr_counter("c", 5) == 5
    assert context.incr_counter("c", -2) == 3
    assert context.get_counter("c") == 3
    assert context.get_state("c") == (3).to_bytes(8, "big")
    with pytest.raises(WrongKind):
        context.incr_counter("k", 1)
    with pytest.raises(WrongKind):
        context.put_state("c", b"x")
    context.del_counter("c")
    context.del_state("k")
    assert context.get_counter("c") == 0 and context.get_state("k") is None
    with pytest.raises(KeyError):
        context.state["k"]


def test_logger_formats_like_logging_and_metrics_are_recorded():
    context = MockContext()
    logger = context.get_logger()
    logger.info("%s has %d", "x", 2)
    logger.warn("w")
    logger.warning("w2")
    logger.error("e")
    logger.debug("d")
    context.record_metric("latency", 3)
    assert context.logs == [("info", "x has 2"), ("warn", "w"), ("warn", "w2"), ("error", "e"), ("debug", "d")]
    assert context.metrics == {"latency": [3.0]}


def test_publish_takes_pulsars_arguments():
    context = MockContext()
    context.publish("persistent://public/default/other", "hello", properties={"a": 1})
    context.publish("other", b"raw", "serde.IdentitySerDe", message_conf={"partition_key": "pk"})
    assert context.published == [
        ("persistent://public/default/other", b"hello", None, {"a": "1"}),
        ("other", b"raw", "pk", {}),
    ]
    with pytest.raises(InvalidArgument, match="serde"):
        context.publish("other", b"x", "serde.PickleSerDe")
    with pytest.raises(InvalidArgument, match="callback"):
        context.publish("other", b"x", callback=print)
    with pytest.raises(TypeError, match="str or bytes"):
        context.publish("other", 3)


def test_ack_is_counted():
    context = MockContext()
    context.process(lambda input, ctx: ctx.ack(), b"")
    assert context.acked == 1


def test_copied_pulsar_code_imports_pulsar():
    import pulsar

    assert pulsar.Function is fnhost.Function


def test_lines_below_the_log_level_are_neither_formatted_nor_sent():
    class Loud:
        def __str__(self):
            raise AssertionError("formatted although its level is dropped")

    context = MockContext(log_level="warn")
    logger = context.get_logger()
    logger.debug("%s", Loud())
    logger.info("%s", Loud())
    logger.warning("kept %d", 1)
    logger.error("kept %d", 2)
    assert context.logs == [("warn", "kept 1"), ("error", "kept 2")]


def test_a_failed_message_leaves_no_effects_behind_but_its_logs_and_metrics_stay():
    def fails_after_writing(input, context):
        context.put_state("kept", b"from the first message") if input == b"ok" else None
        if input == b"ok":
            return None
        context.put_state("lost", b"x")
        context.incr_counter("count", 5)
        context.publish("persistent://public/default/out", b"lost")
        context.ack()
        context.get_logger().info("about to fail")
        context.record_metric("tries", 1)
        raise RuntimeError("boom")

    context = MockContext()
    context.process(fails_after_writing, b"ok")
    with pytest.raises(RuntimeError, match="boom"):
        context.process(fails_after_writing, b"fail")
    assert context.state_values == {"kept": b"from the first message"}
    assert context.counters == {} and context.published == [] and context.acked == 0
    assert ("INFO", "about to fail") in [(level.upper(), text) for level, text in context.logs]
    assert context.metrics["tries"] == [1]


def test_state_with_a_time_to_live_expires_by_the_mock_clock_and_a_rewrite_lives_on():
    from datetime import timedelta

    context = MockContext()
    context.state.put("login", "1", ttl=3600)
    context.put_state("rewritten", b"1", ttl=timedelta(hours=1))
    context.put_state("lasting", b"1")
    context.advance_clock(1800)
    context.state.put("rewritten", "2", ttl=3600)
    context.advance_clock(1800)
    assert context.state.get("login") is None and "login" not in context.state_values
    assert context.state.get("rewritten") == "2"
    assert context.get_state("lasting") == b"1"
    with pytest.raises(fnhost.InvalidArgument, match="MAX_STATE_TTL_MS"):
        context.state.put("never", "x", ttl=0)


def test_the_functions_default_state_ttl_applies_to_puts_and_counters():
    context = MockContext(state_ttl=60)
    context.state.put("session", "1")
    context.incr_counter("visits", 1)
    context.advance_clock(59)
    assert context.state.get("session") == "1" and context.get_counter("visits") == 1
    context.advance_clock(1)
    assert context.state.get("session") is None and context.get_counter("visits") == 0


def test_keys_are_listed_by_prefix_in_byte_order_and_in_pages():
    context = MockContext()
    for key in ("cart/2", "cart/1", "user/1", "cart/3"):
        context.state.put(key, "x")
    context.incr_counter("cart/4", 1)
    assert list(context.state.keys("cart/")) == ["cart/1", "cart/2", "cart/3", "cart/4"]
    assert context.state.list_keys("cart/", limit=2) == ["cart/1", "cart/2"]
    assert context.state.list_keys("cart/", after="cart/2", limit=2) == ["cart/3", "cart/4"]
    assert list(context.state.keys()) == ["cart/1", "cart/2", "cart/3", "cart/4", "user/1"]
    with pytest.raises(fnhost.LimitExceeded, match="MAX_STATE_KEYS_LISTED"):
        context.state.list_keys("", limit=1001)
