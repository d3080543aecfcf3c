"""The lowest versions pyproject.toml allows must have what the code uses.

Each floor below names the API that sets it. ``scripts/check_dependency_floors.sh`` installs exactly
these versions in a fresh venv and runs the tests that exercise them (the check behind each floor).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# package: (lowest version with every API we call, what needs it)
FLOORS = {
    "wandb": ("0.19.10", 'wandb.init(reinit="create_new") in alpacare/tracking.py'),
    "lm-eval": ("0.4.12", "lm_eval.tasks._index and TaskManager.load in alpacare/evaluation/benchmarks/runner.py"),
}


def declared_floor(name: str, requirements: list[str]) -> Version:
    for line in requirements:
        req = Requirement(line)
        if req.name == name:
            lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
            assert lows, f"{line}: no lower bound"
            return max(lows)
    raise AssertionError(f"{name} is not a dependency")


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_dependency_floor_has_the_api_the_code_uses(name):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed, why = FLOORS[name]
    assert declared_floor(name, project["dependencies"]) >= Version(needed), f"{name} >= {needed} needed: {why}"
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs if Requirement(r).name == name]
    for line in extras:
        assert declared_floor(name, [line]) >= Version(needed), f"extra {line}: {name} >= {needed} needed: {why}"


def test_floor_script_installs_the_floors():
    script = (ROOT / "scripts" / "check_dependency_floors.sh").read_text()
    for name, (version, _) in FLOORS.items():
        assert f"{name}=={version}" in script
