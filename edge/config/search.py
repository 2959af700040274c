"""Where device profiles are found: a search path of folders, weakest first.

1. the profiles shipped with Floodgate (package data ``edge/profiles`` in an
   installed wheel; ``firmware-config/profiles`` in a source tree, which is
   the one copy the wheel is built from);
2. the site config's ``profiles_dir`` (relative to the config file);
3. the folders in the ``FLOODGATE_PROFILES`` environment variable
   (separated by ``:``);
4. the folders given with ``--profiles DIR`` on the command line.

A profile is a file ``<model>.yaml``; a later folder overrides an earlier one
by model name, so a site can carry a corrected copy of a shipped profile.
A broken profile is an error only where it is used: a site config naming it
stops with the file, line and key, while ``scan`` reports it and goes on
with the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.config.profile import Profile, load_profile
from floodgate.errors import ConfigError, ConfigIssue

ENV = "FLOODGATE_PROFILES"


def shipped_profiles() -> Path:
    """The folder of the profiles that come with Floodgate."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "profiles"
    return installed if installed.is_dir() else package.parent / "firmware-config" / "profiles"


def env_dirs(environ: Mapping[str, str]) -> list[Path]:
    """The folders named by ``FLOODGATE_PROFILES`` in ``environ``."""
    return [Path(p) for p in environ.get(ENV, "").split(os.pathsep) if p]


@dataclass(frozen=True)
class ProfilePath:
    """Folders to look for profiles in, weakest first (the shipped folder is always first)."""

    dirs: tuple[Path, ...]

    @classmethod
    def of(cls, extra: Iterable[Path] = ()) -> ProfilePath:
        return cls((shipped_profiles(), *extra))

    def then(self, extra: Iterable[Path]) -> ProfilePath:
        """This path with ``extra`` folders after it (stronger)."""
        return ProfilePath((*self.dirs, *extra))

    def missing(self) -> list[Path]:
        """Folders on the path that do not exist (the shipped one always does)."""
        return [d for d in self.dirs if not d.is_dir()]

    def find(self, model: str) -> Path | None:
        """The file that defines ``model``: the one in the strongest folder that has it."""
        for d in reversed(self.dirs):
            p = d / f"{model}.yaml"
            if p.is_file():
                return p
        return None

    def files(self) -> dict[str, Path]:
        """Every model on the path and the file that wins for it, by name."""
        out: dict[str, Path] = {}
        for d in self.dirs:
            if d.is_dir():
                for p in sorted(d.glob("*.yaml")):
                    out[p.stem] = p
        return dict(sorted(out.items()))

    def load_all(self) -> tuple[dict[str, Profile], list[ConfigIssue]]:
        """Every profile that loads, and the problems of those that do not (they are skipped)."""
        good: dict[str, Profile] = {}
        broken: list[ConfigIssue] = []
        for model, p in self.files().items():
            try:
                good[model] = load_profile(p)
            except ConfigError as exc:
                broken.extend(exc.issues)
        return good, broken

    def describe(self) -> str:
        return ", ".join(str(d) for d in self.dirs)
