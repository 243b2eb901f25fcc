"""Pulsar's Python function API names, so that copied Pulsar functions run in fnhost unchanged.

Included in every component fnhost builds from Python; ``import pulsar`` and
``from pulsar import Function`` then give fnhost's classes.
"""

from fnhost import Context, Function

__all__ = ["Context", "Function"]
