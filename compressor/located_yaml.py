"""YAML read as located values: every value keeps the line it came from, so an error can point at it.

Only composing is done by yaml (`yaml.compose`, safe loading): scalars are built with the safe constructor, and
merge keys, custom tags and recursive aliases are refused with one line, so nothing but plain data comes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

from compressor.errors import RecipeError

#: what a plain YAML scalar holds
YAML_SCALARS = (str, int, float, bool, type(None))
#: the most values a recipe may hold once its aliases are expanded: nested aliases ("billion laughs") make a few
#: hundred bytes of YAML expand to billions of values, so reading stops here instead of exhausting the memory
MAX_VALUES = 100_000
TOO_LARGE = (f"expands to more than {MAX_VALUES:,} values (nested aliases?); write the recipe out without anchors "
             "and aliases")


def within_size(data: Any, limit: int = MAX_VALUES) -> bool:
    """True when `data` (lists and dicts, possibly sharing children as aliases do) holds at most `limit` values
    once expanded; stops counting at the limit, so it is cheap even for an exponential structure."""
    pending, seen = [data], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > limit:
            return False
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return True


def yaml_problem(exc: BaseException) -> str:
    """yaml's explanation as one line, with the column when it knows it."""
    if isinstance(exc, yaml.MarkedYAMLError):
        context = f"{exc.context}, " if exc.context else ""
        column = f" at column {exc.problem_mark.column + 1}" if exc.problem_mark else ""
        return f"{context}{exc.problem or 'unreadable'}{column}"
    return str(exc) or type(exc).__name__


@dataclass
class Located:
    """A value of the recipe and the line it came from (None for dicts), so every error can point at it.

    `value` is the Python scalar for "scalar", a list of `Located` for "seq", and a list of (key, value) `Located`
    pairs for "map": duplicates are kept so that validation can report them.
    """

    kind: str
    value: Any
    line: int | None

    @classmethod
    def from_data(cls, data: Any) -> Located:
        if not within_size(data):
            raise RecipeError(f"the recipe {TOO_LARGE}")
        return cls._from_checked_data(data)

    @classmethod
    def _from_checked_data(cls, data: Any) -> Located:
        if isinstance(data, dict):
            return cls("map", [(cls._from_checked_data(k), cls._from_checked_data(v)) for k, v in data.items()],
                       None)
        if isinstance(data, (list, tuple)):
            return cls("seq", [cls._from_checked_data(item) for item in data], None)
        return cls("scalar", data, None)

    @classmethod
    def from_yaml(cls, node: yaml.Node, label: str) -> Located:
        return _LocatedReader(label).read(node)

    def plain(self) -> Any:
        """The Python value, for type checks and messages."""
        if self.kind == "seq":
            return [item.plain() for item in self.value]
        if self.kind == "map":
            return {hashable_key(key.plain()): value.plain() for key, value in self.value}
        return self.value

    def is_null(self) -> bool:
        return self.kind == "scalar" and self.value is None


def hashable_key(key: Any) -> Any:
    return key if isinstance(key, YAML_SCALARS) else repr(key)


class _LocatedReader:
    """Turns a composed YAML node graph into `Located`s, constructing scalars with the safe constructor only."""

    DEFAULT_TAGS = {"seq": "tag:yaml.org,2002:seq", "map": "tag:yaml.org,2002:map"}

    def __init__(self, label: str):
        self.label = label
        self.constructor = yaml.constructor.SafeConstructor()
        self.open: set[int] = set()
        self.values = 0

    def fail(self, node: yaml.Node, message: str) -> NoReturn:
        raise RecipeError(f"{self.label}:{node.start_mark.line + 1}: {message}")

    def read(self, node: yaml.Node) -> Located:
        line = node.start_mark.line + 1
        self.values += 1
        if self.values > MAX_VALUES:
            self.fail(node, f"the recipe {TOO_LARGE}")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:merge":
                self.fail(node, "merge keys (<<) are not supported in recipes; write the keys out")
            try:
                return Located("scalar", self.constructor.construct_object(node, deep=True), line)
            except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
                self.fail(node, f"cannot read the value {node.value!r}: {yaml_problem(exc)}; recipes hold plain "
                                "strings, numbers, true/false, null, lists and mappings")
        kind = "seq" if isinstance(node, yaml.SequenceNode) else "map"
        if node.tag != self.DEFAULT_TAGS[kind]:
            self.fail(node, f"unsupported tag {node.tag!r}; recipes hold plain lists and mappings")
        if id(node) in self.open:
            self.fail(node, "an alias refers to a list or mapping that contains it; recipes cannot be recursive")
        self.open.add(id(node))
        if kind == "seq":
            value = [self.read(item) for item in node.value]
        else:
            value = [(self.read(key), self.read(item)) for key, item in node.value]
        self.open.discard(id(node))
        return Located(kind, value, line)
