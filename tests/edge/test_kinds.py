"""Device kinds: one module each, one table; every place that depends on the kind reads it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from edge.commission.budget import _NoSink  # a sink that keeps nothing
from edge.config import load_profile
from edge.config.site import Device
from edge.devices.drivers import KINDS, make_driver
from floodgate.errors import ConfigError
from floodgate.vocab import DEVICE_KINDS
from simulators.devices import SIM_KINDS, DepthSource, World, make_sim
from simulators.scenarios import Scenario
from tests.conftest import PROFILES


def test_the_tables_name_the_same_kinds() -> None:
    assert list(KINDS) == list(DEVICE_KINDS)
    assert list(SIM_KINDS) == list(DEVICE_KINDS)


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_gets_its_kinds_driver_and_simulator(path: Path) -> None:
    prof = load_profile(path)
    dev = msgspec.convert({"id": "d1", "bus": "b", "unit": 1, "profile": prof.model}, Device)
    if prof.kind == "level":
        dev = msgspec.convert(
            {
                **msgspec.to_builtins(dev),
                "thresholds": {"warning": {"on": 150, "clear": 120}, "danger": {"on": 270, "clear": 240}},
            },
            Device,
        )
    assert type(make_driver(dev, prof, _NoSink())) is KINDS[prof.kind]
    sim = make_sim(prof, 1, World(DepthSource(Scenario.named("dry"))))
    assert type(sim) is SIM_KINDS[prof.kind]


def test_an_unknown_kind_is_a_config_error_never_a_gate(tmp_path: Path) -> None:
    gate = load_profile(PROFILES / "relay-gate-spm.yaml")
    bogus = msgspec.structs.replace(gate, kind="pump")  # type: ignore[arg-type]
    dev = msgspec.convert({"id": "g1", "bus": "b", "unit": 1, "profile": gate.model}, Device)
    with pytest.raises(ConfigError, match="unknown kind 'pump'"):
        make_driver(dev, bogus, _NoSink())
    with pytest.raises(ValueError, match="no simulator for kind 'pump'"):
        make_sim(bogus, 1, World(DepthSource(Scenario.named("dry"))))


def test_an_unknown_kind_in_a_profile_names_file_line_and_key(tmp_path: Path) -> None:
    text = (PROFILES / "relay-gate-spm.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith("kind:"))
    lines[n] = "kind: pump"
    path = tmp_path / "relay-gate-spm.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    (issue,) = err.value.issues
    assert (issue.file, issue.line, issue.key) == (str(path), n + 1, "kind")
