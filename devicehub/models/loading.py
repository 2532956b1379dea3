"""Reading the hub's YAML files into pydantic models, with problems a person can act on.

Every input file of the hub (config, limits, programs) goes through here so that a bad
file gives one line per problem, each naming the field (``steps[2].amplitude_v``) and,
where the YAML says, the line: never a traceback and never only the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (a field path and, when known, a line) and what."""

    field: str
    message: str
    line: int | None = None

    def format(self, source: str | None = None) -> str:
        """``source:line: field: message``, leaving out the parts that are unknown."""
        where = ""
        if source:
            where = f"{source}:{self.line}: " if self.line else f"{source}: "
        elif self.line:
            where = f"line {self.line}: "
        return f"{where}{self.field}: {self.message}" if self.field else f"{where}{self.message}"

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out


class InputError(ValueError):
    """A file or request that cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: Iterable[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("; ".join(self.lines()) or "invalid input")

    def lines(self) -> list[str]:
        """One printable line per problem."""
        return [p.format(self.source) for p in self.problems]


class ProgramError(InputError):
    """A session program that cannot be loaded (or overridden) as written."""


class ConfigError(InputError):
    """A hub config that cannot be loaded."""


class LimitsError(InputError):
    """A limits library that cannot be loaded."""


# ---------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first given on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _line_map(node: yaml.Node, path: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Path of every mapping key and sequence item in the document -> its 1-based line."""
    if out is None:
        out = {}
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = (*path, key)
            out[child] = key_node.start_mark.line + 1
            _line_map(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            out[child] = item.start_mark.line + 1
            _line_map(item, child, out)
    return out


def parse_yaml(text: str | bytes) -> tuple[Any, dict[Loc, int]]:
    """YAML text -> (data, line map). Raises InputError with the line of a syntax error."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError([Problem("", f"not UTF-8 text (byte {exc.start})")]) from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = loader.construct_document(node)
        return data, _line_map(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "unreadable YAML"
        if exc.context and exc.problem:
            what = f"{exc.problem} ({exc.context})"
        line = mark.line + 1 if mark is not None else None
        prefix = "YAML" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise InputError([Problem("", f"{prefix}: {what}", line=line)]) from None
    except yaml.YAMLError as exc:
        raise InputError([Problem("", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()


def read_source(path_or_text: str | bytes | Path) -> tuple[bytes | str, str | None]:
    """A Path, or a one-line string, names a file to read; bytes and multi-line strings are text.

    Returns (content, source name for messages). A missing or unreadable file is an
    InputError naming the path.
    """
    if isinstance(path_or_text, bytes):
        return path_or_text, None
    if isinstance(path_or_text, str) and "\n" in path_or_text:
        return path_or_text, None
    path = Path(path_or_text)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise InputError([Problem("", "no such file")], source=str(path)) from None
    except IsADirectoryError:
        raise InputError([Problem("", "is a directory, expected a YAML file")], source=str(path)) from None
    except OSError as exc:
        raise InputError([Problem("", f"cannot read: {exc.strerror or exc}")], source=str(path)) from None


# ---------------------------------------------------------------- pydantic errors -> problems


def field_path(loc: Iterable[str | int]) -> str:
    """``('steps', 2, 'amplitude_v')`` -> ``steps[2].amplitude_v``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _clean_loc(loc: Iterable[str | int], tags: frozenset[str]) -> Loc:
    """Drop the discriminated-union tag pydantic puts after a list index (``steps.2.led.x``)."""
    out: list[str | int] = []
    prev: str | int | None = None
    for part in loc:
        if isinstance(part, str) and isinstance(prev, int) and part in tags:
            prev = part
            continue
        out.append(part)
        prev = part
    return tuple(out)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_NAMES = {
    bool: "a boolean", int: "an integer", float: "a number", str: "a string",
    list: "a list", dict: "a mapping", type(None): "nothing (null)",
}


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    got = _TYPE_NAMES.get(type(value), type(value).__name__)
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field missing"
    if kind == "union_tag_invalid":
        return f"unknown step kind {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return f"missing {str(ctx.get('discriminator', 'kind')).strip(chr(39))}: every step needs its kind"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {got}"
    if kind == "list_type":
        return f"expected a list, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got} {_describe(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got} {_describe(value)}"
    if kind in ("string_type",):
        return f"expected a string, got {got} {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got} {_describe(value)}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {_describe(value)}"
    if kind == "string_pattern_mismatch":
        return f"{_describe(value)} is not allowed here (letters, digits, '-' and '_' only; pattern {ctx.get('pattern')})"
    msg = str(err.get("msg", kind))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal",
                "too_short", "too_long", "string_too_short", "string_too_long"):
        msg = f"{msg[0].lower()}{msg[1:]}, got {_describe(value)}"
    return msg


def problems_from_validation(exc: ValidationError, lines: dict[Loc, int] | None = None,
                             tags: Iterable[str] = ()) -> list[Problem]:
    """One Problem per pydantic error, with a field path and the nearest known line."""
    tagset = frozenset(tags)
    lines = lines or {}
    out: list[Problem] = []
    for err in exc.errors():
        loc = _clean_loc(err["loc"], tagset)
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        out.append(Problem(field_path(loc), _message(err), line))
    return sort_problems(out)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """In file order (problems without a line last), as a reader goes through the file."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def line_of(field_loc: Loc, lines: dict[Loc, int]) -> int | None:
    """Line of the nearest enclosing node of a path."""
    for n in range(len(field_loc), -1, -1):
        if field_loc[:n] in lines:
            return lines[field_loc[:n]]
    return None


def validate_document(model: type[BaseModel], data: Any, *, lines: dict[Loc, int] | None = None,
                      tags: Iterable[str] = (), error: type[InputError] = InputError,
                      source: str | None = None, context: dict[str, Any] | None = None) -> Any:
    """``model.model_validate(data)`` turning every failure into ``error`` with problems."""
    if not isinstance(data, dict):
        what = "an empty document" if data is None else _TYPE_NAMES.get(type(data), type(data).__name__)
        raise error([Problem("", f"expected a mapping of fields at the top level, got {what}", 1 if lines else None)],
                    source=source)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise error(problems_from_validation(exc, lines, tags), source=source) from None


def read_yaml(path_or_text: str | bytes | Path, error: type[InputError] = InputError
              ) -> tuple[Any, dict[Loc, int], bytes | str, str | None]:
    """Read (when a path) and parse YAML: (data, line map, raw content, source name).

    Every failure is raised as ``error`` naming the source.
    """
    try:
        content, source = read_source(path_or_text)
    except InputError as exc:
        raise error(exc.problems, source=exc.source) from None
    try:
        data, lines = parse_yaml(content)
    except InputError as exc:
        raise error(exc.problems, source=source) from None
    return data, lines, content, source
