"""Build hook: ship ``firmware-config/profiles`` inside the wheel as ``edge/profiles``.

``firmware-config/profiles`` stays the one copy of the shipped profiles (the
source tree, the tests and the simulators read it there); an installed
wheel finds them as package data (:func:`edge.config.search.shipped_profiles`).
Everything else about the package is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROFILES = Path(__file__).resolve().parent / "firmware-config" / "profiles"


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads firmware-config/ where it is
            return
        target = Path(self.build_lib) / "edge" / "profiles"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted(PROFILES.glob("*.yaml")):
            shutil.copyfile(src, target / src.name)


setup(cmdclass={"build_py": BuildPy})
