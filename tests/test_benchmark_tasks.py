"""Our local tasks ask the model exactly what lm-eval's built-in tasks ask it.

For every task of the ``medical`` and ``general`` suites, both tasks (lm-eval's own YAML, and ours
from alpacare/evaluation/benchmarks/tasks/) read the same hand-written documents in the upstream dataset's
field layout from a local file (nothing is downloaded), and must build the same requests: the same
(context, continuation) pairs, few-shot examples included, with the same metrics. MMLU: every one of
the 57 subjects; BBH: every one of the 27 subtasks (each is a cheap build).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alpacare.evaluation.benchmarks import tasks_index
from alpacare.evaluation.benchmarks.make_tasks import FAMILIES, load_flat, localize

pytest.importorskip("lm_eval")

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"

# A few documents per dataset, written for this test, in the upstream field layout.
DOCS = {
    "GBaker/MedQA-USMLE-4-options-hf": [
        {"id": f"q{i}", "sent1": f"A {40 + i}-year-old man has chest pain on exertion. What is the next step?",
         "sent2": "", "startphrase": "", "ending0": "ECG", "ending1": "CT of the head", "ending2": "Colonoscopy",
         "ending3": "Skin biopsy", "label": i % 4} for i in range(6)],
    "openlifescienceai/medmcqa": [
        {"id": f"m{i}", "question": f"Which vitamin deficiency causes scurvy (case {i})?", "opa": "A", "opb": "C",
         "opc": "D", "opd": "K", "cop": 1, "choice_type": "single", "exp": "Vitamin C.", "subject_name": "Biochemistry",
         "topic_name": "Vitamins"} for i in range(6)],
    "bigbio/pubmed_qa": [
        {"QUESTION": f"Does drug {i} lower blood pressure?", "CONTEXTS": ["Background sentence.", f"Result {i}."],
         "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": ["Hypertension"], "YEAR": "2001",
         "reasoning_required_pred": "yes", "reasoning_free_pred": "yes", "final_decision": ["yes", "no", "maybe"][i % 3],
         "LONG_ANSWER": "It does.", "pubid": 1000 + i} for i in range(6)],
    "EleutherAI/headqa": [
        {"name": "Cuaderno_2013_1_B", "year": "2013", "category": "biology", "qid": i, "qtext": f"Which organ makes insulin ({i})?",
         "ra": 1 + i % 4, "image": None, "answers": [{"aid": k + 1, "atext": t} for k, t in
                                                     enumerate(["Pancreas", "Liver", "Spleen", "Kidney"])]} for i in range(6)],
    "cais/mmlu": [
        {"question": f"  Question number {i} about this subject? ", "subject": "x", "choices": ["w", "x", "y", "z"],
         "answer": i % 4} for i in range(7)],
    "SaylorTwift/bbh": [{"input": f"Input number {i}: not ( True ) and False is", "target": "False"} for i in range(5)],
    "truthfulqa/truthful_qa": [
        {"question": f"What happens if you crack your knuckles a lot ({i})?",
         "mc1_targets": {"choices": ["Nothing in particular happens.", "You get arthritis."], "labels": [1, 0]},
         "mc2_targets": {"choices": ["Nothing in particular happens.", "It is harmless.", "You get arthritis."],
                         "labels": [1, 1, 0]}} for i in range(5)],
    "EleutherAI/drop": [
        {"section_id": "s", "query_id": f"id{i}", "passage": f"The team scored {i} touchdowns in the first half.",
         "question": "How many touchdowns were scored in the first half?",
         "answer": {"number": str(i), "date": {"day": "", "month": "", "year": ""}, "spans": []},
         "validated_answers": {"number": [str(i)], "date": [{"day": "", "month": "", "year": ""}], "spans": [[]]}}
        for i in range(5)],
    # MeQSum (abachaa/MeQSum's spreadsheet, BigBio's meqsum_source layout): with and without "MESSAGE",
    # and one empty reference (upstream scores it NaN).
    "abachaa/MeQSum": [
        {"CHQ": f"SUBJECT: knee {i}\nMESSAGE: My knee has hurt for {i + 2} weeks when I climb stairs. Is it arthritis?",
         "Summary": "What causes knee pain on stairs?", "File": f"{i}.txt"} for i in range(4)] + [
        {"CHQ": "Is ibuprofen safe with a stomach ulcer?", "Summary": "Is ibuprofen safe with an ulcer?", "File": "4.txt"},
        {"CHQ": "MESSAGE: Where can I get a flu shot?", "Summary": "", "File": "5.txt"}],
}
DOCS["medmcqa"] = DOCS["openlifescienceai/medmcqa"]  # lm-eval 0.4.12's name for the same hub dataset


def _upstream_files() -> dict[str, Path]:
    """Our leaf task name -> lm-eval's YAML it is derived from (from make_tasks' file list)."""
    out = {}
    for patterns in FAMILIES.values():
        for pattern in patterns:
            for path in sorted(LM_EVAL_TASKS.glob(pattern)):
                cfg = localize(load_flat(path))
                if isinstance(cfg.get("task"), str):
                    out[cfg["task"]] = path
    return out


UPSTREAM = _upstream_files()


def suite_leaves(suite: str) -> list[str]:
    import yaml

    conf = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "benchmark" / f"{suite}.yaml").read_text())
    return [leaf.name for t in conf["tasks"] for leaf in tasks_index.leaves(t)]


# alpacare_meqsum has its own test below (lm-eval's meqsum module cannot be imported offline).
MEDICAL_AND_GENERAL = sorted((set(suite_leaves("medical")) | set(suite_leaves("general"))) - {"alpacare_meqsum", "alpacare_meqsum_alpaca"})
SUITE_SHOTS = {"alpacare_mmlu": 5, "alpacare_bbh": 3, "alpacare_drop": 3}


def _shots_for(task: str) -> list[int]:
    for prefix, k in SUITE_SHOTS.items():
        if task == prefix or task.startswith(prefix + "_"):
            return sorted({0, k})
    return [0, 2]


def _write_docs(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")


def _same_function(a, b) -> bool:
    """The same upstream function (lm-eval may load its module twice, under two module objects)."""
    import inspect

    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    return (a.__qualname__, Path(inspect.getsourcefile(a)).resolve()) == (b.__qualname__, Path(inspect.getsourcefile(b)).resolve())


def _build(cfg: dict, shots: int):
    from lm_eval.api.task import ConfigurableTask

    task = ConfigurableTask(config=cfg)
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=4, rank=0, world_size=1)
    return task


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Our tasks resolved against a data root that holds the hand-written docs for every split."""
    root = tmp_path_factory.mktemp("bench-data")
    for entry in tasks_index.index().values():
        for path in entry.data_files().values():
            if path.startswith(tasks_index.DATA_PLACEHOLDER):
                rel = path[len(tasks_index.DATA_PLACEHOLDER) + 1:]
                dataset = next(d for d in DOCS if rel.startswith(d + "/"))
                _write_docs(root / rel, DOCS[dataset])
    return tasks_index.prepare_task_dir(tmp_path_factory.mktemp("tasks") / "tasks", root, {}), root


def test_suites_cover_the_issue_tasks():
    medical = suite_leaves("medical")
    for name in ("alpacare_medqa_4options", "alpacare_medmcqa", "alpacare_pubmedqa", "alpacare_headqa_en",
                 "alpacare_mmlu_anatomy", "alpacare_mmlu_clinical_knowledge", "alpacare_mmlu_college_medicine",
                 "alpacare_mmlu_medical_genetics", "alpacare_mmlu_professional_medicine", "alpacare_mmlu_college_biology"):
        assert name in medical
    general = suite_leaves("general")
    assert "alpacare_truthfulqa_mc2" in general and "alpacare_drop" in general
    assert len([t for t in general if t.startswith("alpacare_mmlu_")]) == 57
    assert len([t for t in general if t.startswith("alpacare_bbh_")]) == 27


def test_groups_cover_the_same_subtasks_as_upstream():
    """alpacare_mmlu and alpacare_bbh hold exactly lm-eval's mmlu and bbh_fewshot subtasks (read from
    lm-eval's own group YAMLs: its 4 MMLU subgroups by tag, and bbh_fewshot's task list)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    mmlu_dir = LM_EVAL_TASKS / "mmlu" / "default"
    subgroups = load_yaml(mmlu_dir / "_mmlu.yaml", resolve_func=False)["task"]
    tags = {t for g in subgroups for t in load_yaml(mmlu_dir / f"_{g}.yaml", resolve_func=False)["task"]}
    upstream_mmlu = sorted(cfg["task"] for cfg in (load_yaml(p, resolve_func=False) for p in mmlu_dir.glob("mmlu_*.yaml"))
                           if cfg.get("tag") in tags)
    assert len(upstream_mmlu) == 57
    assert sorted(leaf.name for leaf in tasks_index.leaves("alpacare_mmlu")) == sorted("alpacare_" + n for n in upstream_mmlu)
    upstream_bbh = load_yaml(LM_EVAL_TASKS / "bbh" / "fewshot" / "_bbh_fewshot.yaml", resolve_func=False)["task"]
    assert len(upstream_bbh) == 27
    assert sorted(leaf.name for leaf in tasks_index.leaves("alpacare_bbh")) == sorted(
        "alpacare_bbh_" + n[len("bbh_fewshot_"):] for n in upstream_bbh)


def test_shipped_yamls_match_what_make_tasks_derives_now(tmp_path, monkeypatch):
    """The committed YAMLs are what make_tasks derives from the installed lm-eval (no drift)."""
    from alpacare.evaluation.benchmarks import make_tasks

    monkeypatch.setattr(make_tasks, "OUT", tmp_path)
    make_tasks.main()
    for family in FAMILIES:
        for path in sorted((tmp_path / family).glob("*.yaml")):
            shipped = tasks_index.TASKS_DIR / family / path.name
            assert shipped.is_file(), path.name
            # The stamp names the lm-eval that derived them; another version may derive the same tasks.
            assert unstamped(shipped.read_text()) == unstamped(path.read_text()), path.name


def unstamped(yaml_text: str) -> str:
    return re.sub(r"^(# Derived from lm-eval) \S+", r"\1 VERSION", yaml_text, count=1)


@pytest.mark.parametrize("task", MEDICAL_AND_GENERAL)
def test_prompts_choices_targets_and_metrics_equal_lm_evals_task(task, prepared, tmp_path):
    from lm_eval.tasks._yaml_loader import load_yaml

    task_dir, root = prepared
    ours_path = next(task_dir.rglob(f"{task}.yaml"))
    ours_cfg = load_yaml(ours_path)
    theirs_cfg = load_yaml(UPSTREAM[task])
    dataset = theirs_cfg.pop("dataset_path")
    theirs_cfg.pop("dataset_name", None)
    splits = {theirs_cfg.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")} - {None}
    for split in splits:
        _write_docs(tmp_path / f"{split}.jsonl", DOCS[dataset])
    theirs_cfg["dataset_path"] = "json"
    theirs_cfg["dataset_kwargs"] = {"data_files": {s: str(tmp_path / f"{s}.jsonl") for s in splits}}
    for cfg in (ours_cfg, theirs_cfg):
        for key in ("tag", "group", "task_list"):
            cfg.pop(key, None)
    if task == "alpacare_pubmedqa":  # our local release has no validation split (module docstring of make_tasks)
        theirs_cfg["validation_split"] = None
    for shots in _shots_for(task):
        ours, theirs = _build(dict(ours_cfg), shots), _build(dict(theirs_cfg), shots)
        assert [i.args for i in ours.instances] == [i.args for i in theirs.instances], (task, shots)
        assert [i.doc for i in ours.instances] == [i.doc for i in theirs.instances]
        assert ours.OUTPUT_TYPE == theirs.OUTPUT_TYPE
        assert ours.config.metric_list == theirs.config.metric_list
        assert ours.config.generation_kwargs == theirs.config.generation_kwargs
        assert _same_function(ours.config.process_results, theirs.config.process_results)
        for doc in list(ours.eval_docs)[:4]:
            assert ours.doc_to_text(doc) == theirs.doc_to_text(doc)
            assert ours.doc_to_target(doc) == theirs.doc_to_target(doc)
            if ours.OUTPUT_TYPE == "multiple_choice":
                assert ours.doc_to_choice(doc) == theirs.doc_to_choice(doc)


# ------------------------------------------------------------------------------------- MeQSum


class _EvaluateOffline:
    """What ``evaluate.load(name)`` gives lm-eval's meqsum module, offline. evaluate's metric scripts
    live on the hub, so only "rouge" is rebuilt here, as evaluate's rouge script computes it (a
    ``RougeScorer`` over rouge1/rouge2/rougeL/rougeLsum without stemming, a ``BootstrapAggregator``,
    its "mid" F1); the other metrics raise, which upstream catches and scores NaN."""

    def __init__(self, name, *args, **kwargs):
        self.name = name

    def compute(self, predictions, references, **kwargs):
        if self.name != "rouge":
            raise RuntimeError(f"evaluate metric {self.name} needs the hub")
        from rouge_score import rouge_scorer, scoring

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
        aggregator = scoring.BootstrapAggregator()
        for ref, pred in zip(references, predictions):
            aggregator.add_scores(scorer.score(ref, pred))
        return {k: v.mid.fmeasure for k, v in aggregator.aggregate().items()}


@pytest.fixture
def upstream_meqsum(monkeypatch, tmp_path):
    """lm-eval's own meqsum YAML and module, reading the local docs (its module imported with
    ``evaluate.load`` answered offline, then dropped again)."""
    import types

    from lm_eval.tasks._yaml_loader import load_yaml

    import numpy as np

    fake = types.ModuleType("evaluate")
    fake.load = _EvaluateOffline
    monkeypatch.setitem(__import__("sys").modules, "evaluate", fake)
    # Upstream writes numpy 1's np.NAN (gone in numpy 2, so its empty-output branch raises as installed).
    monkeypatch.setattr(np, "NAN", np.nan, raising=False)
    try:
        cfg = load_yaml(LM_EVAL_TASKS / "meqsum" / "meqsum.yaml")
    finally:
        __import__("sys").modules.pop("lm_eval.tasks.meqsum.utils", None)
    _write_docs(tmp_path / "train.jsonl", DOCS["abachaa/MeQSum"])
    assert (cfg.pop("dataset_path"), cfg.pop("dataset_name")) == ("bigbio/meqsum", "meqsum_source")
    cfg["dataset_path"] = "json"
    cfg["dataset_kwargs"] = {"data_files": {"train": str(tmp_path / "train.jsonl")}}
    return cfg


def test_meqsum_prompts_targets_and_generation_equal_lm_evals_meqsum(upstream_meqsum, prepared):
    from lm_eval.tasks._yaml_loader import load_yaml

    task_dir, _ = prepared
    ours_cfg = load_yaml(task_dir / "meqsum" / "alpacare_meqsum.yaml")
    for shots in (0, 2):
        ours, theirs = _build(dict(ours_cfg), shots), _build(dict(upstream_meqsum), shots)
        assert [i.args for i in ours.instances] == [i.args for i in theirs.instances], shots
        assert ours.OUTPUT_TYPE == theirs.OUTPUT_TYPE == "generate_until"
        # Until a blank line, no max_gen_toks: the model's default (HFLM and vLLM: 256 new tokens).
        assert ours.config.generation_kwargs == theirs.config.generation_kwargs == {"until": ["\n\n"]}
        assert ours.config.description == theirs.config.description
        for doc in list(ours.eval_docs):
            assert ours.doc_to_text(doc) == theirs.doc_to_text(doc)
            assert ours.doc_to_target(doc) == theirs.doc_to_target(doc)
    theirs_metrics = {m["metric"]: m for m in upstream_meqsum["metric_list"]}
    for m in ours_cfg["metric_list"]:  # upstream's ROUGE metrics; BLEU, BERTScore, BLEURT need the hub
        assert m == theirs_metrics[m["metric"]]
    assert [m["metric"] for m in ours_cfg["metric_list"]] == ["rougeL", "rouge1", "rouge2"]


def test_meqsum_scores_equal_lm_evals_metric_on_the_same_outputs(upstream_meqsum, prepared):
    """Per item and aggregated: an empty prediction (or reference) is NaN and drops out of the mean."""
    import math

    import numpy as np
    from lm_eval.tasks._yaml_loader import load_yaml

    task_dir, _ = prepared
    ours = _build(load_yaml(task_dir / "meqsum" / "alpacare_meqsum.yaml"), 0)
    theirs = _build(dict(upstream_meqsum), 0)
    docs = list(ours.eval_docs)
    outputs = [" What causes knee pain on stairs?", "", "Knee pain when climbing stairs: arthritis?\n", " ",
               "Is ibuprofen safe with an ulcer?", "Where is a flu shot?"]
    per_item = {m: [] for m in ("rougeL", "rouge1", "rouge2")}
    for doc, out in zip(docs, outputs):
        a, b = ours.process_results(doc, [out]), theirs.process_results(doc, [out])
        for m in per_item:
            assert (math.isnan(a[m]) and math.isnan(b[m])) or a[m] == b[m], (m, out)
            per_item[m].append(a[m])
    assert sum(math.isnan(v) for v in per_item["rougeL"]) == 2  # the empty output and the empty reference
    for m, values in per_item.items():
        assert ours.aggregation()[m] is theirs.aggregation()[m]  # lm-eval's nanmean
        assert ours.aggregation()[m](values) == np.nanmean(values) > sum(0 if math.isnan(v) else v for v in values) / len(values)


def test_meqsum_alpaca_variant_differs_only_in_the_prompt(prepared):
    from lm_eval.tasks._yaml_loader import load_yaml

    from alpacare.evaluation.benchmarks.meqsum import ALPACA_INSTRUCTION, doc_to_text
    from alpacare.prompts.alpaca import format_prompt

    task_dir, _ = prepared
    base = _build(load_yaml(task_dir / "meqsum" / "alpacare_meqsum.yaml"), 0)
    alpaca = _build(load_yaml(task_dir / "meqsum" / "alpacare_meqsum_alpaca.yaml"), 0)
    assert [i.doc for i in alpaca.instances] == [i.doc for i in base.instances]
    assert [i.args[0] for i in alpaca.instances] == [format_prompt(ALPACA_INSTRUCTION, doc_to_text(i.doc).strip())
                                                     for i in base.instances]
    assert [i.args[1] for i in alpaca.instances] == [i.args[1] for i in base.instances]
    assert alpaca.config.process_results is base.config.process_results
    assert alpaca.config.metric_list == base.config.metric_list
