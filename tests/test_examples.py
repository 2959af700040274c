"""The shipped examples work together: site config, collector config, site registry, broker ACL."""

from __future__ import annotations

from cloud.config import load_cloud_config
from cloud.registry import load_registry
from edge.config.site import load_site
from tests.conftest import EXAMPLE_SITE, REPO

CLOUD = REPO / "firmware-config" / "cloud"


def test_the_example_sites_floods_go_to_its_area_not_the_fallback() -> None:
    node = load_site(EXAMPLE_SITE, check_files=False).config.node
    cfg, _ = load_cloud_config(CLOUD / "collector-example.yaml")
    assert cfg.registry is not None
    registry = load_registry(CLOUD / cfg.registry)
    assert node in registry.sites, f"the registry knows the example's node {node!r}"
    dept, unit = registry.route(node, "flood")
    assert unit != registry.fallback_unit and (dept, unit) == ("drainage", "drainage-dasha")
    assert registry.site_name(node) == "科翔路隧道"


def test_the_acl_lets_the_example_node_write_only_under_its_own_id() -> None:
    acl = (REPO / "firmware-config" / "broker" / "mosquitto-acl.conf").read_text()
    rules = [line.split() for line in acl.splitlines() if line and not line.startswith("#")]
    first_user = next(i for i, r in enumerate(rules) if r[0] == "user")
    assert all(r[0] == "pattern" for r in rules[:first_user]), "rules before 'user' lines are anonymous-only"
    assert ["pattern", "read", "floodgate/v1/_host/state"] in rules[:first_user]
    assert ["pattern", "read", "floodgate/v1/_host/#"] in rules[:first_user]  # each collector's own too
