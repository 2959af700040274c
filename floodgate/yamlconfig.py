"""YAML that remembers where every key came from, and validation errors mapped to lines."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from floodgate.errors import ConfigError, ConfigIssue

M = TypeVar("M", bound=msgspec.Struct)


@dataclass
class Source:
    """A parsed YAML file; ``data`` keeps ruamel's line information."""

    path: Path
    data: Any
    text: str
    issues: list[ConfigIssue] = field(default_factory=list)

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """1-based line of the key (or item) at ``loc``; the nearest parent when not found."""
        node = self.data
        line: int | None = 1
        for part in loc:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        return line

    def issue(self, loc: Sequence[str | int], message: str) -> None:
        self.issues.append(ConfigIssue(str(self.path), self.line_of(loc), _key(loc), message))

    def raise_if_issues(self) -> None:
        if self.issues:
            raise ConfigError(list(self.issues))


def _key(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def load_yaml(path: Path) -> Source:
    """Parse ``path``; a syntax error is a ConfigError with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "(file)", exc.strerror or str(exc))]) from None
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        msg = f"YAML syntax: {exc.problem or exc.context}"
        raise ConfigError([ConfigIssue(str(path), line, "(syntax)", msg)]) from None
    if not isinstance(data, CommentedMap):
        raise ConfigError([ConfigIssue(str(path), 1, "(top)", "must be a mapping of keys")])
    return Source(path, data, text)


def plain(node: Any) -> Any:
    """ruamel's commented containers as plain dicts and lists."""
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    # ruamel keeps formatting in subclasses (ScalarFloat, ScalarInt, ...): unwrap them.
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _struct_types(tp: Any) -> Iterable[type[msgspec.Struct]]:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        yield tp
    for arg in getattr(tp, "__args__", ()) or ():
        yield from _struct_types(arg)
    origin = getattr(tp, "__origin__", None)
    if origin is not None and origin is not tp:
        yield from _struct_types(origin)


def _field_names(model: type[msgspec.Struct], seen: set[type[msgspec.Struct]]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for f in msgspec.structs.fields(model):
        names.add(f.encode_name)
        for sub in _struct_types(f.type):
            names |= _field_names(sub, seen)
    return names


def _unannotate(tp: Any) -> Any:
    return tp.__origin__ if getattr(tp, "__metadata__", None) is not None else tp


def _optional(tp: Any) -> Any:
    """X for ``X | None``, else None."""
    members = getattr(tp, "__args__", None)
    if not members or getattr(tp, "__origin__", None) in (list, dict, tuple) or type(None) not in members:
        return None
    rest = [m for m in members if m is not type(None)]
    return rest[0] if len(rest) == 1 else None


def _tagged(tp: Any) -> dict[str, type[msgspec.Struct]] | None:
    """tag -> struct for a union of tagged structs (e.g. rtu | tcp buses)."""
    members = getattr(tp, "__args__", None)
    if not members or getattr(tp, "__origin__", None) in (list, dict, tuple):
        return None
    out: dict[str, type[msgspec.Struct]] = {}
    for m in members:
        if not (isinstance(m, type) and issubclass(m, msgspec.Struct)):
            return None
        info = m.__struct_config__
        if not isinstance(info.tag, str) or info.tag_field is None:
            return None
        out[info.tag] = m
    return out


class _Walker:
    """Checks a value against a type piece by piece, so every problem gets its own path."""

    def __init__(self, source: Source, known: list[str]) -> None:
        self.source = source
        self.known = known

    def _record(self, loc: list[str | int], err: msgspec.ValidationError) -> None:
        text = str(err)
        msg, sep, _ = text.rpartition(" - at `")
        msg = msg if sep else text
        missing = re.match(r"Object missing required field `(.+)`", msg)
        if missing:
            loc, msg = [*loc, missing.group(1)], "is required"
        self.source.issue(loc, msg)

    def check(self, value: Any, tp: Any, loc: list[str | int]) -> None:
        before = len(self.source.issues)
        bare = _unannotate(tp)
        if value is not None and _optional(bare) is not None:
            bare = _unannotate(_optional(bare))  # X | None with a value: check it as an X
        tags = _tagged(bare)
        if tags is not None and isinstance(value, dict):
            field_name = next(iter(tags.values())).__struct_config__.tag_field
            tag = value.get(field_name)
            if tag in tags:
                self._struct(value, tags[tag], loc, skip={field_name or ""})
            else:
                self.source.issue([*loc, field_name or "type"], f"must be one of {sorted(tags)}")
            return
        if isinstance(bare, type) and issubclass(bare, msgspec.Struct) and isinstance(value, dict):
            self._struct(value, bare, loc)
        elif getattr(bare, "__origin__", None) is list and isinstance(value, list):
            for i, item in enumerate(value):
                self.check(item, bare.__args__[0], [*loc, i])
        elif getattr(bare, "__origin__", None) is dict and isinstance(value, dict):
            for key, item in value.items():
                self.check(item, bare.__args__[1], [*loc, key])
        if len(self.source.issues) == before:  # the parts are fine: check the whole
            try:
                msgspec.convert(value, type=tp)
            except msgspec.ValidationError as exc:
                self._record(loc, exc)

    def _struct(
        self,
        value: dict[str, Any],
        model: type[msgspec.Struct],
        loc: list[str | int],
        skip: set[str] | None = None,
    ) -> None:
        fields = {f.encode_name: f for f in msgspec.structs.fields(model)}
        for key in value:
            if key not in fields and key not in (skip or set()):
                close = difflib.get_close_matches(str(key), list(fields) or self.known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.source.issue([*loc, key], f"{key!r} is not a known key{hint}")
        for name, f in fields.items():
            if name in value:
                self.check(value[name], f.type, [*loc, name])
            elif f.required:
                self.source.issue([*loc, name] if loc else [name], "is required")


def validate(model: type[M], source: Source) -> M | None:
    """Validate the file against ``model``, reporting every problem found on ``source``."""
    data = plain(source.data)
    before = len(source.issues)
    _Walker(source, sorted(_field_names(model, set()))).check(data, model, [])
    if len(source.issues) > before:
        return None
    return msgspec.convert(data, type=model)
