"""A test function: echoes its input, but raises on `fail` and divides by zero on `crash`."""

from fnhost import Function


class Failing(Function):
    def process(self, input, context):
        if input == b"fail":
            raise ValueError("refusing the message fail")
        if input == b"crash":
            return 1 / 0
        return input
