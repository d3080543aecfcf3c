"""W&B artifacts with lineage, offline: responses logs the dataset, train uses it and logs the
model, predict uses the model and logs predictions, judge uses them and logs the evaluation. Read
back from the real offline run files (each stage's ``.wandb`` log), through the real CLI, against
a teacher and a judge on loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, run_cli, teacher_args
from tests.openai_server import OpenAITestServer
from tests.test_judge import server_reply
from tests.test_train_support import cache_dir, smollm_tokenizer_dir, tiny_model_dir  # noqa: F401  (fixtures)
from tests.test_train_validation import _wandb_records


def artifact_records(run_dir: Path) -> dict[str, list[tuple[str, str, str, bool]]]:
    """Per stage (its W&B job type): (name, type, digest, used) of every artifact its run recorded,
    less the ones W&B makes for logged tables (type ``run_table``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    found = {}
    for log in (run_dir / "wandb").glob("offline-run-*/*.wandb"):
        for _ in range(50):  # the service may still be writing after finish(): read until the exit record
            records = [pb.Record.FromString(data) for data in _wandb_records(log)]
            if any(r.WhichOneof("record_type") == "exit" for r in records):
                break
            time.sleep(0.2)
        job = next(r.run.job_type for r in records if r.WhichOneof("record_type") == "run")
        found[job] = [(r.artifact.name, r.artifact.type, r.artifact.digest, r.artifact.use_after_commit)
                      for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type != "run_table"]
    return found


@pytest.mark.skipif(not (SHARED_DATA / "MedInstruct-test.jsonl").is_file(), reason="needs ../shared/alpacare-data")
def test_dataset_model_predictions_evaluation_chain_in_the_offline_runs(tmp_path, tiny_model_dir, cache_dir):
    run_dir = tmp_path / "run"
    with OpenAITestServer() as teacher, OpenAITestServer(reply=server_reply) as judge:
        proc = run_cli([*teacher_args(teacher), "stages=[instructions,dedup,responses,train,predict,judge]",
                        "instructions.count=12", f"model.path={tiny_model_dir}", f"cache_dir={cache_dir}",
                        "train.max_steps=1", "train.max_length=96", "trainer.enable_progress_bar=false",
                        "predict.limit=2", "predict.max_new_tokens=4", "judge=openai_compatible",
                        f"judge.base_url={judge.url}", "judge.model=test-judge", "judge.structured_output=false",
                        "judge.references=[gpt-4]", "judge.bootstrap=0", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = artifact_records(run_dir)
    (dataset,) = runs["responses"]
    assert dataset[:2] == ("responses-train.json", "dataset") and not dataset[3]
    used, logged = runs["train"]
    assert used == (*dataset[:3], True)  # the same version: same content, same digest
    assert logged[:2] == ("train-model", "model") and not logged[3]
    used, predictions = runs["predict"]
    assert used == (*logged[:3], True)
    assert predictions[:2] == ("predict-medinstruct.jsonl", "predictions")
    used, evaluation = runs["judge"]
    assert used == (*predictions[:3], True)
    assert evaluation[:2] == ("judge-verdicts.jsonl", "evaluation") and not evaluation[3]
    # The model is a reference (its files are checksummed, not copied under wandb/).
    copied = [p.name for p in (run_dir / "wandb").rglob("*") if p.suffix == ".safetensors"]
    assert copied == []
    assert json.loads((run_dir / "judge" / "stats.json").read_text())["win_rates"]
