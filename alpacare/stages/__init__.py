"""Pipeline stages: each declared once here, implemented in ``alpacare/stages/<name>.py``.

A declaration (``StageSpec``) says what the stage reads (``Input``: another stage's artifact, or
an explicit path under a config key), what it writes (``Artifact``), which LLM endpoints it talks
to (roles: ``teacher``, ``judge``), and whether every rank of a distributed job runs it. The CLI
checks every selected stage's inputs and endpoint credentials against these declarations before
the first stage starts, so a typo or a missing file fails in the first second, not after an hour
of paid generation; stages import the artifacts below instead of spelling file names.

Every stage module exposes ``run(ctx: StageContext) -> dict``: it reads its inputs with
``ctx.input_path`` / ``ctx.model_source``, writes its artifacts under ``ctx.dir`` (final files
atomically, so a crash never leaves one that looks complete), writes ``stats.json`` with
``ctx.write_stats`` (last, so its presence means the stage completed), logs to ``ctx.tracker``,
and returns a short summary for the console. A module may also expose ``check(cfg)``: cheap checks
(known names, data files present) that the CLI runs for every selected stage before the first starts.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import DictConfig, OmegaConf

from alpacare.errors import ConfigError, DataError
from alpacare.tracking import Tracker

if TYPE_CHECKING:
    from alpacare.llm.client import LLMClient

# Version of the stats.json layout every stage writes (``StageContext.write_stats``).
STATS_SCHEMA_VERSION = 1
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class Artifact:
    """A file or directory a stage writes into its folder of the run dir. ``name`` may hold
    ``{test_set}``-style fields for artifacts written once per item of a config list."""

    stage: str
    name: str
    # The W&B artifact type it is logged as (lineage: dataset -> model -> predictions -> evaluation);
    # None: not logged.
    wandb_type: Optional[str] = None

    def path(self, run_dir: Path, **fields: str) -> Path:
        return Path(run_dir) / self.stage / self.name.format(**fields)

    def wandb_name(self, **fields: str) -> str:
        return f"{self.stage}-{self.name.format(**fields)}"


# Every artifact another stage (or a user) reads, declared once.
INSTRUCTIONS = Artifact("instructions", "instructions.jsonl")
KEPT = Artifact("dedup", "kept.jsonl")
CONTAMINATED = Artifact("dedup", "contaminated.jsonl")
TRAIN_SET = Artifact("responses", "train.json", wandb_type="dataset")
MODEL = Artifact("train", "model", wandb_type="model")
TRAIN_METRICS = Artifact("train", "metrics.jsonl")
MERGED_MODEL = Artifact("train", "model_merged")
PREDICTIONS = Artifact("predict", "{test_set}.jsonl", wandb_type="predictions")
VERDICTS = Artifact("judge", "verdicts.jsonl", wandb_type="evaluation")
WIN_RATES = Artifact("judge", STATS_FILE)
# HealthBench: every rubric item's verdict, and every conversation's scores (alpacare/evaluation/healthbench.py).
HEALTHBENCH_GRADES = Artifact("judge", "healthbench_grades.jsonl", wandb_type="evaluation")
HEALTHBENCH_SCORES = Artifact("judge", "healthbench_scores.jsonl")
GRADER_LABELS = Artifact("grader_check", "labels.jsonl", wandb_type="evaluation")
GRADER_CHECK = Artifact("grader_check", STATS_FILE)
BENCHMARK_RESULTS = Artifact("benchmark", "results.json")
REPORT = Artifact("report", "report.md")
REPORT_HTML = Artifact("report", "report.html")


@dataclass(frozen=True)
class Input:
    """What a stage reads: ``artifact`` from this run dir, unless config key ``override`` names
    an explicit path. ``kind="model"``: the override may also be a Hugging Face id; ``kind="data"``:
    a file or a directory (a Hugging Face ``datasets`` save_to_disk dir). ``each``: a
    config key holding a list; the artifact is read once per item (``{test_set}`` in its name)."""

    artifact: Artifact
    override: str
    kind: str = "file"
    each: Optional[str] = None
    each_field: str = "test_set"


def _is_input_file(path: Path, inp: Input) -> bool:
    return path.is_file() or (inp.kind == "data" and path.is_dir())


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[Input, ...] = ()
    outputs: tuple[Artifact, ...] = ()
    # LLM endpoint roles the stage calls (config groups of the same name: teacher=..., judge=...).
    endpoints: tuple[str, ...] = ()
    # Every rank of a distributed launch runs it (train); the others run on rank 0 only.
    all_ranks: bool = False

    def input(self, artifact: Artifact) -> Input:
        for inp in self.inputs:
            if inp.artifact == artifact:
                return inp
        raise KeyError(f"stage {self.name} declares no input {artifact}")


# The pipeline, in order. ``alpacare stages=[...]`` runs a subset, always in this order.
STAGES: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("instructions", outputs=(INSTRUCTIONS,), endpoints=("teacher",)),
    StageSpec("dedup", inputs=(Input(INSTRUCTIONS, "dedup.input"),), outputs=(KEPT, CONTAMINATED)),
    StageSpec("responses", inputs=(Input(KEPT, "responses.input"),), outputs=(TRAIN_SET,), endpoints=("teacher",)),
    StageSpec("train", inputs=(Input(TRAIN_SET, "train.data", kind="data"),), outputs=(MODEL,), all_ranks=True),
    StageSpec("predict", inputs=(Input(MODEL, "predict.model", kind="model"),), outputs=(PREDICTIONS,)),
    StageSpec("judge", inputs=(Input(PREDICTIONS, "judge.predictions", each="judge.test_sets"),),
              outputs=(VERDICTS, WIN_RATES, HEALTHBENCH_GRADES, HEALTHBENCH_SCORES), endpoints=("judge",)),
    # The judge endpoint as a HealthBench grader against physicians' labels (meta-eval set).
    StageSpec("grader_check", outputs=(GRADER_LABELS, GRADER_CHECK), endpoints=("judge",)),
    StageSpec("benchmark", inputs=(Input(MODEL, "benchmark.model", kind="model"),), outputs=(BENCHMARK_RESULTS,)),
    StageSpec("report", outputs=(REPORT, REPORT_HTML)),
)}
STAGE_ORDER = tuple(STAGES)


def selected_stages(cfg: Any) -> list[StageSpec]:
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; choose from {list(STAGE_ORDER)}")
    if not cfg.stages:
        raise ConfigError("stages: is empty")
    return [STAGES[name] for name in STAGE_ORDER if name in cfg.stages]


def _select(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _each(cfg: Any, inp: Input) -> list[dict[str, str]]:
    if inp.each is None:
        return [{}]
    return [{inp.each_field: str(v)} for v in (_select(cfg, inp.each) or [])]


def check_inputs(cfg: Any, run_dir: Path, stages: list[StageSpec]) -> None:
    """Before anything runs: every input of every selected stage is an explicit path that exists,
    or comes from an earlier selected stage, or is already in the run dir."""
    from alpacare.evaluation.inference import check_model_source

    produced: set[str] = set()
    for spec in stages:
        for inp in spec.inputs:
            explicit = _select(cfg, inp.override)
            if explicit:
                if inp.kind == "model":
                    check_model_source(str(explicit), inp.override)
                elif not _is_input_file(Path(str(explicit)).expanduser(), inp):
                    raise DataError(f"{inp.override}={explicit}: no such file")
                continue
            if inp.artifact.stage in produced:
                continue
            for fields in _each(cfg, inp):
                path = inp.artifact.path(run_dir, **fields)
                if not path.exists():
                    raise DataError(
                        f"{spec.name}: needs {path.relative_to(run_dir)} in the run dir ({run_dir}); "
                        f"add the {inp.artifact.stage} stage (stages=[{inp.artifact.stage},{spec.name}]) "
                        f"or set {inp.override}={'PATH' if inp.kind == 'model' else 'FILE'}"
                    )
        produced.add(spec.name)


@dataclass
class Resources:
    """Things several stages of one job share: LLM clients by role, and local llama.cpp servers
    (one per GGUF, so a local teacher and a local judge share one process)."""

    cfg: DictConfig
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _clients: dict[str, "LLMClient"] = field(default_factory=dict)
    _local_urls: dict[tuple, str] = field(default_factory=dict)

    def endpoint(self, role: str) -> "LLMClient":
        if role not in self._clients:
            from alpacare.llm.client import open_endpoint

            self._clients[role] = self._stack.enter_context(
                open_endpoint(self.cfg[role], role, Path(self.cfg.cache_dir), local_url=self.local_server_url)
            )
        return self._clients[role]

    def local_server_url(self, endpoint_cfg: Any) -> str:
        key = (endpoint_cfg.gguf, endpoint_cfg.model, endpoint_cfg.local_n_ctx, endpoint_cfg.local_extra_buffer_types)
        if key not in self._local_urls:
            from alpacare.llm.server import local_server

            self._local_urls[key] = self._stack.enter_context(local_server(
                endpoint_cfg.gguf, model_alias=endpoint_cfg.model, n_ctx=endpoint_cfg.local_n_ctx,
                extra_buffer_types=endpoint_cfg.local_extra_buffer_types,
            ))
        return self._local_urls[key]

    def ledgers(self) -> dict[str, dict[str, Any]]:
        """Tokens and cost per role, for the run summary."""
        return {role: client.ledger.summary() for role, client in self._clients.items()}

    def close(self) -> None:
        self._stack.close()


@dataclass
class StageContext:
    cfg: DictConfig
    run_dir: Path
    spec: StageSpec
    tracker: Tracker
    resources: Resources
    started: float = field(default_factory=time.perf_counter)

    @property
    def stage(self) -> str:
        return self.spec.name

    @property
    def dir(self) -> Path:
        d = self.run_dir / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def input_path(self, artifact: Artifact, **fields: str) -> Path:
        """The explicit file under the input's config key if set, else ``artifact`` in this run dir."""
        inp = self.spec.input(artifact)
        explicit = _select(self.cfg, inp.override)
        if explicit:
            path = Path(str(explicit)).expanduser()
            if not _is_input_file(path, inp):
                raise DataError(f"{inp.override}={explicit}: no such file")
            return path
        path = artifact.path(self.run_dir, **fields)
        if not path.is_file():
            raise DataError(
                f"{self.stage}: no input ({path} does not exist); run the {artifact.stage} stage first "
                f"or set {inp.override}=FILE"
            )
        return path

    def model_source(self, artifact: Artifact = MODEL) -> str:
        """A model to load for inference: the input's config key (dir or HF id) if set, else
        ``artifact`` (the trained model dir) in this run dir."""
        inp = self.spec.input(artifact)
        explicit = _select(self.cfg, inp.override)
        if explicit:
            return str(explicit)
        path = artifact.path(self.run_dir)
        if not path.is_dir():
            raise DataError(f"{self.stage}: no model ({path} does not exist); run the train stage first "
                            f"or set {inp.override}=DIR_OR_HF_ID")
        return str(path)

    def log_artifact(self, artifact: Artifact, *also: Path, **fields: str) -> None:
        """W&B: this stage's ``artifact`` (plus files ``also``) as a new version, when it changed."""
        self.tracker.log_artifact(artifact.wandb_name(**fields), artifact.wandb_type, artifact.path(self.run_dir, **fields), *also)

    def use_artifact(self, artifact: Artifact, path: Path, **fields: str) -> None:
        """W&B: ``path`` (this run's ``artifact`` or the explicit file read instead) as this stage's input."""
        self.tracker.use_artifact(artifact.wandb_name(**fields), artifact.wandb_type, path)

    def endpoint(self, role: str) -> "LLMClient":
        if role not in self.spec.endpoints:
            raise RuntimeError(f"stage {self.stage} does not declare the {role!r} endpoint")
        return self.resources.endpoint(role)

    def teacher(self) -> "LLMClient":
        return self.endpoint("teacher")

    def write_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``<stage>/stats.json`` with the common header (schema version, stage, seconds so far)."""
        from alpacare.data.jsonl import write_json_atomic

        full = {"schema_version": STATS_SCHEMA_VERSION, "stage": self.stage,
                "seconds": round(time.perf_counter() - self.started, 1), **stats}
        write_json_atomic(self.dir / STATS_FILE, full)
        return full
