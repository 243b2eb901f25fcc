"""sliding-average: the average of readings over windows of 10 s every 5 s, on event time.

Input: JSON readings ``{"value": 21.5}``, produced with their event time, or carrying it as
``"time_ms"``, which wins. Output, per window:
``{"start": MS, "end": MS, "count": N, "average": X}``.

Run it::

    fnhost localrun --py examples/python-windows/sliding_average.py --classname sliding_average.SlidingAverage \\
        --inputs readings --output averages --window-length-duration-ms 10000 \\
        --sliding-interval-duration-ms 5000 --event-time --max-lag-ms 2000 --until-idle
"""

import json


class SlidingAverage:
    def process(self, window, context):
        values = [json.loads(value)["value"] for value in window.values]
        return {"start": window.start, "end": window.end, "count": len(values), "average": sum(values) / len(values)}

    def event_time(self, value, message):
        return json.loads(value).get("time_ms")
