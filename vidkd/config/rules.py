"""The kinds of rule in the table of defaults.py (RULES, RELATIONS).

A rule is called with a key's value, already of its default's type (the loader checks that first), and says
whether the value keeps it; `str(rule)` says what it asks for, to follow "must be" in an error message.
"""
import os
from collections import namedtuple

# A rule between keys: `holds(*values)`, the values in the order of `keys`; `text` says what it asks for.
Relation = namedtuple("Relation", "keys holds text")


class Anything:
    """Any value of the default's type (a switch)."""

    def __call__(self, value):
        return True

    def __str__(self):
        return "of its default's type"


class Text:
    """A string without NUL characters (no path may hold one); `empty`: "" allowed."""

    def __init__(self, empty):
        self.empty = empty

    def __call__(self, value):
        return "\0" not in value and (self.empty or value.strip() != "")

    def __str__(self):
        return "a text without NUL characters" if self.empty else "a non-empty text without NUL characters"


class OneOf:
    def __init__(self, *choices):
        self.choices = choices

    def __call__(self, value):
        return value in self.choices

    def __str__(self):
        return f"one of {list(self.choices)}"


class Range:
    """A number from `low` to `high` (None: no upper bound); `above`: above `low`, not `low` itself."""

    def __init__(self, low, high=None, above=False):
        self.low, self.high, self.above = low, high, above

    def __call__(self, value):
        return (value > self.low if self.above else value >= self.low) and (self.high is None or value <= self.high)

    def __str__(self):
        low = f"> {self.low}" if self.above else f">= {self.low}"
        return low if self.high is None else f"{low} and <= {self.high}"


class List:
    """A list of `size` items (a number, or the (fewest, most) it may hold), each keeping the rule `each`;
    `ordered`: no item smaller than the one before."""

    def __init__(self, each, size, ordered=False):
        self.each, self.ordered = each, ordered
        self.fewest, self.most = (size, size) if isinstance(size, int) else size

    def __call__(self, value):
        return (self.fewest <= len(value) <= self.most and all(self.each(v) for v in value)
                and (not self.ordered or all(a <= b for a, b in zip(value, value[1:]))))

    def __str__(self):
        size = self.fewest if self.fewest == self.most else f"{self.fewest} to {self.most}"
        return f"a list of {size} items, each {self.each}" + (", smallest first" if self.ordered else "")


class OutputDir:
    """A folder to write in: a non-empty path, neither an existing file nor inside one."""

    def __call__(self, value):
        if not Text(empty=False)(value):
            return False
        path = os.path.abspath(value)
        while not os.path.exists(path):  # the nearest part that exists ("/" at the latest)
            path = os.path.dirname(path)
        return os.path.isdir(path)

    def __str__(self):
        return "a folder path (not an existing file, nor inside one)"
