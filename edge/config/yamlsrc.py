"""YAML that remembers where every key came from, and pydantic errors mapped to lines."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from floodgate.errors import ConfigError, ConfigIssue

M = TypeVar("M", bound=BaseModel)


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


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for info in model.model_fields.values():
        for sub in _models_in(info.annotation):
            names |= _field_names(sub, seen)
    return names


def _models_in(annotation: Any) -> Iterable[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _models_in(arg)


def validate(model: type[M], source: Source) -> M | None:
    """Validate the whole file against ``model``; record issues on ``source``."""
    try:
        return model.model_validate(source.data)
    except ValidationError as exc:
        known = sorted(_field_names(model, set()))
        for err in exc.errors():
            loc = [p for p in err["loc"] if isinstance(p, str | int)]
            msg = err["msg"]
            if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
                msg = f"{loc[-1]!r} is not a known key"
                close = difflib.get_close_matches(loc[-1], known, n=1)
                if close:
                    msg += f"; did you mean {close[0]!r}?"
            elif err["type"] == "missing":
                msg = "is required"
            # pydantic adds the union member's tag to loc; drop non-keys like 'function-after[...]'
            loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in _TAGS))]
            source.issue(loc, msg)
        return None


_TAGS = {"rtu", "tcp"}
