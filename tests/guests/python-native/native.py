"""A function whose package needs a native extension, which a component cannot load."""

import markupsafe

from fnhost import Function


class Escape(Function):
    def process(self, input, context):
        return str(markupsafe.escape(input.decode()))
