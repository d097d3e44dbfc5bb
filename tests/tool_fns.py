"""User tools for the tool tests, written the way a user writes them: module-level functions,
one registered by name, the others given as 'tests.tool_fns:function'."""

import os

from grpo_trainer.tools import register_tool


@register_tool("test_temperature")
def temperature(city: str, unit: str = "c") -> str:
    """Look up today's temperature in a city.

    A fixed table: the tests check arguments and results, not weather."""
    celsius = {"paris": 21, "oslo": 9}[city.lower()]
    return str(celsius if unit == "c" else celsius * 9 / 5 + 32)


def shout(text):
    """Upper-case the text."""
    return text.upper()


def process_ids(text):
    """Say which process runs the tool and which started it."""
    return f"{os.getpid()} {os.getppid()}"


def reads_a_file(path):
    """Read a file (hostile when the path is outside the sandbox)."""
    with open(path) as f:
        return f.read()


def returns_a_list(text):
    """Break the contract: return a list."""
    return [text]


def no_docstring(text):
    return text
