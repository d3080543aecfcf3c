"""W&B logging: one run per stage of a job, grouped by sweep so runs compare in a dashboard.

Offline by default (no network; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later).
Configs pass through ``redact`` first: no secret reaches W&B.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|authorization)$", re.IGNORECASE)
# Names of variables that *name* a secret (teacher.api_key_env) are fine to show, and so are a
# tokenizer's special tokens (model.pad_token).
_SAFE_SUFFIX = ("_env", "pad_token", "eos_token", "bos_token", "unk_token")


def redact(obj: Any) -> Any:
    """A plain copy of a config with any secret-looking value masked."""
    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True, throw_on_missing=False)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            secret = _SECRET_KEY.search(str(k)) and not str(k).endswith(_SAFE_SUFFIX)
            out[k] = "***" if secret and v not in (None, "") else redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def process_rank() -> int:
    """This process's global rank in a distributed run (0 when alone), read before any process
    group exists, the way Lightning's cluster environments read it:

    1. ``RANK``: torchrun / TorchElastic set the global rank;
    2. ``LOCAL_RANK`` (and ``NODE_RANK`` or ``GROUP_RANK``): processes Lightning's own launcher
       starts (LightningEnvironment). They inherit the parent's environment, SLURM's variables
       included, so these come before ``SLURM_PROCID``, which is 0 in every one of them;
    3. ``SLURM_PROCID`` when srun started the tasks (SLURMEnvironment.detect: ``SLURM_NTASKS`` set
       and the job not named "bash" or "interactive", Lightning's interactive-mode rule).
    """
    env = os.environ
    if env.get("RANK", "").strip().isdigit():
        return int(env["RANK"])
    if env.get("LOCAL_RANK", "").strip().isdigit():
        local = int(env["LOCAL_RANK"])
        node = env.get("NODE_RANK", env.get("GROUP_RANK", "0")).strip()
        node_rank = int(node) if node.isdigit() else 0
        if node_rank == 0:
            return local
        per_node = env.get("LOCAL_WORLD_SIZE", "").strip()
        return node_rank * int(per_node) + local if per_node.isdigit() else node_rank + local  # > 0 either way
    srun = "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    if srun and env.get("SLURM_PROCID", "").strip().isdigit():
        return int(env["SLURM_PROCID"])
    return 0


class Tracker:
    """Logs one stage of one job. A no-op when ``logger.enabled`` is false (``logger=none``)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, stage: str, group: str, run_name: str):
        self.run = None
        if not cfg.logger.enabled or cfg.logger.mode == "disabled" or process_rank() != 0:
            return  # other ranks of a distributed run report through rank 0
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            mode=cfg.logger.mode,
            group=cfg.logger.group or group,
            job_type=stage,
            name=f"{run_name}-{stage}",
            tags=list(cfg.logger.tags) + ([cfg.experiment] if cfg.experiment else []),
            config=redact(cfg),
            dir=str(run_dir),
            # A new run beside any still open (pyproject pins wandb >= 0.19.10, which has create_new).
            reinit="create_new",
            settings=wandb.Settings(console="off", _disable_stats=True),
        )

    def log(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in metrics.items():
                self.run.summary[k] = v

    def histogram(self, key: str, values, bin_edges) -> None:
        """A W&B histogram with our bins (the same counts as stats.json), comparable across a sweep."""
        if self.run is not None:
            import numpy as np
            import wandb

            counts, edges = np.histogram(values, bins=bin_edges)
            self.run.log({key: wandb.Histogram(np_histogram=(counts, edges))})

    def image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def log_artifact(self, name: str, kind: str, *paths: Path) -> None:
        """``paths`` (files, or a directory) as a version of the artifact ``name``, this stage's output."""
        if self.run is not None:
            self.run.log_artifact(_artifact(name, kind, paths))

    def use_artifact(self, name: str, kind: str, *paths: Path) -> None:
        """``path`` as this stage's input: the version another stage logged from the same content
        (W&B versions by digest), so the runs chain dataset -> model -> predictions -> evaluation.

        ``Run.use_artifact`` refuses offline runs (wandb 0.19-0.31: "Cannot use artifact when in
        offline mode"); for a draft artifact it logs it with ``use_after_commit``, which is what this
        does directly, and which ``wandb sync`` uploads as the use."""
        if self.run is not None:
            self.run._log_artifact(_artifact(name, kind, paths), use_after_commit=True)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def _artifact(name: str, kind: str, paths: tuple[Path, ...]):
    """A file is copied into the artifact (data, predictions, verdicts: small); a directory (a model:
    gigabytes of weights) is a checksummed ``file://`` reference, never copied into ``wandb/``."""
    import wandb

    artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", name), type=kind)
    for path in (Path(p).resolve() for p in paths):
        if path.is_dir():
            artifact.add_reference(path.as_uri())
        else:
            artifact.add_file(str(path), name=path.name)
    return artifact
