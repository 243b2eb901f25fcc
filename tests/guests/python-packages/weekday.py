"""A function with a third-party package: the weekday of a date written in any form dateutil reads."""

from dateutil import parser

from fnhost import Function


class Weekday(Function):
    def process(self, input, context):
        when = parser.parse(input.decode())
        return f"{when.date().isoformat()} is a {when.strftime('%A')}"
