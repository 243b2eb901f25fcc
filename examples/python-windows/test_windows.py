"""Unit tests of the two window functions, without the host: `python -m pytest`."""

import json

from fnhost import Message, Window
from fnhost.testing import MockContext
from sliding_average import SlidingAverage
from user_counts import UserCounts


def window(values, start=0, end=1):
    return Window(start, end, [Message(value=json.dumps(value).encode()) for value in values])


def test_user_counts_counts_each_users_events():
    events = [{"user_id": "b"}, {"user_id": "a"}, {"user_id": "b"}, {}]
    assert UserCounts().process(window(events), MockContext()) == {"": 1, "a": 1, "b": 2}


def test_sliding_average_averages_the_window_and_gives_its_span():
    readings = [{"value": 10.0}, {"value": 20.0}]
    average = SlidingAverage().process(window(readings, 0, 10_000), MockContext())
    assert average == {"start": 0, "end": 10_000, "count": 2, "average": 15.0}
