"""Process rank under launchers (item 14) and dependency floors (item 13)."""

from __future__ import annotations

import pytest

SLURM = {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train"}


@pytest.mark.parametrize("env,rank", [
    ({}, 0),
    ({"RANK": "3", "LOCAL_RANK": "1"}, 3),  # torchrun
    ({**SLURM, "SLURM_PROCID": "5"}, 5),  # srun started every task
    ({**SLURM, "LOCAL_RANK": "1"}, 1),  # Lightning spawned a worker inside a SLURM job: inherits SLURM_PROCID=0
    ({**SLURM, "SLURM_JOB_NAME": "interactive", "LOCAL_RANK": "0"}, 0),
    ({**SLURM, "SLURM_JOB_NAME": "bash", "SLURM_PROCID": "2"}, 0),  # interactive: SLURM is not the launcher
    ({"LOCAL_RANK": "0", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 4),
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),
])
def test_process_rank_reads_the_launcher_as_lightning_does(monkeypatch, env, rank):
    from alpacare.tracking import process_rank

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", *SLURM):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert process_rank() == rank


def test_dependency_floors_cover_what_the_code_calls():
    """from_pretrained(dtype=...) needs transformers 4.56; packed per-example attention in
    transformers' masking code needs torch 2.6."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, needed in {"transformers": "4.56", "torch": "2.6"}.items():
        floors = [Version(s.version) for s in deps[name].specifier if s.operator in (">=", "==", "~=")]
        assert floors and min(floors) >= Version(needed), (name, str(deps[name].specifier))
        assert not deps[name].specifier.contains(str(Version(needed).release[0]) + "." + str(Version(needed).release[1] - 1))
