"""The setup's decisions (scripts/setup_machine.py): what it installs given which commands exist."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "setup_machine.py"
spec = importlib.util.spec_from_file_location("setup_machine", SCRIPT)
setup = importlib.util.module_from_spec(spec)
sys.modules["setup_machine"] = setup
spec.loader.exec_module(setup)

ALL_TOOLS = {t.command for t in setup.DEBIAN_TOOLS}


def plan(present: set[str], node=(20, 20, 2), debian_node=False):
    return setup.plan_system(lambda c: f"/usr/bin/{c}" if c in present else None, lambda: node,
                             lambda path: debian_node)


def test_nothing_installed_when_every_command_exists():
    result = plan(ALL_TOOLS | {"node", "npm"})
    assert result.packages == [] and result.unavailable == []


def test_each_debian_package_only_when_its_own_command_is_missing():
    result = plan((ALL_TOOLS - {"qemu-aarch64-static", "chromium"}) | {"node", "npm"})
    assert result.packages == ["qemu-user-static", "chromium"]
    assert any("qemu-aarch64-static" in r and "arm target" in r for r in result.reasons)


def test_shipped_node_with_its_npm_is_accepted_as_it_is():
    """The image's Node.js 20 with its own npm: Debian's npm must never be asked for."""
    result = plan({"node", "npm"})
    assert "npm" not in result.packages and "nodejs" not in result.packages
    assert result.packages == [t.package for t in setup.DEBIAN_TOOLS]


def test_no_node_at_all_installs_debians():
    result = plan(ALL_TOOLS)
    assert result.packages == ["nodejs", "npm"]


def test_old_node_is_left_alone_and_the_web_features_reported_unavailable():
    result = plan(ALL_TOOLS | {"node", "npm"}, node=(16, 20, 0))
    assert result.packages == []
    assert len(result.unavailable) == 1 and "16.20.0" in result.unavailable[0] and "wasm" in result.unavailable[0]


def test_npm_missing_beside_a_foreign_node_is_not_installed_from_debian():
    result = plan(ALL_TOOLS | {"node"}, debian_node=False)
    assert result.packages == [] and "no npm" in result.unavailable[0]
    assert plan(ALL_TOOLS | {"node"}, debian_node=True).packages == ["npm"]


def test_a_failed_optional_step_is_recorded_and_the_setup_goes_on(capsys):
    steps = setup.Steps()
    assert not steps.run("broken piece", ["false"], feature="the arm target check")
    assert steps.run("working piece", ["true"])
    assert steps.unavailable == ["the arm target check: broken piece failed"]
    assert [name for name, _ in steps.done] == ["working piece"]
    assert "FAILED: broken piece" in capsys.readouterr().out


def test_a_failed_required_step_stops_the_setup():
    with pytest.raises(SystemExit, match="sparc cannot run without it"):
        setup.Steps().run("install sparc", ["false"])


@pytest.mark.parametrize("profile, expected", [
    ("demo", ["python_packages"]),
    ("test", ["python_packages", "system_packages", "cached_tools"]),
])
def test_the_demo_sets_up_python_packages_only(monkeypatch, profile, expected):
    """make demo needs no apt, npm or rootfs step; make test runs them all."""
    calls = []
    for name in ("python_packages", "system_packages", "cached_tools"):
        monkeypatch.setattr(setup, name, lambda *args, name=name: calls.append(name))
    monkeypatch.setattr(setup, "plan_system", lambda *args: setup.Plan())
    assert setup.main([profile]) == 0
    assert calls == expected


def test_the_test_profile_installs_every_extra_ray_included():
    """make test installs sparc[all]; ``all`` must name every other extra, so the distributed
    tests find Ray (the extra ``distributed``) installed."""
    extras = tomllib.loads((SCRIPT.parent.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ray") for r in extras["distributed"])
    named = re.fullmatch(r"sparc\[(.*)\]", extras["all"][0]).group(1).split(",")
    assert sorted(named) == sorted(set(extras) - {"all"})
    assert setup.EXTRAS["test"] == "all"
