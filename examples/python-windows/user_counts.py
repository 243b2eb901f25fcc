"""user-counts: how many events each user had in each tumbling window of 10 events.

Input: JSON events with a ``user_id``. Output, per window: ``{"u0": 4, "u1": 3}``, users in name order.

Run it::

    fnhost localrun --py examples/python-windows/user_counts.py --classname user_counts.UserCounts \\
        --inputs events --output counts --window-length-count 10 --until-idle
"""

import json
from collections import Counter


class UserCounts:
    def process(self, window, context):
        counts = Counter(json.loads(value).get("user_id") or "" for value in window.values)
        return dict(sorted(counts.items()))
