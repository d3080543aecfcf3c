"""MeQSum-style summarization, scored with ROUGE-L by ``rouge-score`` (no ``evaluate.load``).

The model writes a short question for each consumer health question, through the predict
machinery (the Alpaca template the model was trained with, batched greedy generation). The input
is lm-eval's MeQSum ``doc_to_text`` (the text after "MESSAGE:" when there is one), the instruction
its task description; the generation is cut at the first blank line (lm-eval's ``until: ["\\n\\n"]``).
Scores: ROUGE-L F1 per item (rouge-score, no stemming: what ``evaluate``'s rouge computes), their
mean and its standard error (lm-eval's ``mean_stderr``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

INSTRUCTION = "The following text contains a medical question. Extract and summarize the question."
MAX_NEW_TOKENS = 48  # MeQSum summaries are one short question (well under 40 tokens)
METRIC = "rougeL"


def doc_to_text(doc: dict[str, Any]) -> str:
    """lm-eval's meqsum ``doc_to_text`` (lm_eval/tasks/meqsum/utils.py), same slicing."""
    text = doc["CHQ"]
    idx = text.find("MESSAGE")
    return text[idx + 9:] if idx != -1 else text


def prompts_for(docs: Sequence[dict[str, Any]]) -> list[str]:
    from alpacare.prompts.alpaca import format_prompt

    return [format_prompt(INSTRUCTION, doc_to_text(d).strip()) for d in docs]


def postprocess(text: str) -> str:
    return text.split("\n\n", 1)[0].strip()


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([METRIC], use_stemmer=False)
    return [scorer.score(ref, pred)[METRIC].fmeasure for pred, ref in zip(predictions, references)]


def mean_stderr(values: Sequence[float]) -> Optional[float]:
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def score(task: str, docs: Sequence[dict[str, Any]], generate: Callable[[list[str]], list[str]],
          log_samples: bool = False) -> dict[str, Any]:
    """Generate, score, and return the task's entries in lm-eval's results layout."""
    outputs = [postprocess(t) for t in generate(prompts_for(docs))]
    scores = rouge_l(outputs, [d["Summary"] for d in docs])
    value = sum(scores) / len(scores) if scores else float("nan")
    stderr = mean_stderr(scores)
    result = {
        "results": {task: {"alias": task, f"{METRIC},none": value,
                           f"{METRIC}_stderr,none": stderr if stderr is not None else "N/A"}},
        "n-shot": {task: 0},
        "higher_is_better": {task: {METRIC: True}},
        "n-samples": {task: {"original": len(docs), "effective": len(docs)}},
        "versions": {task: 1.0},
        "configs": {task: {"task": task, "output_type": "generate_until", "description": INSTRUCTION,
                           "prompt_template": "alpaca", "generation_kwargs": {"until": ["\n\n"],
                           "max_new_tokens": MAX_NEW_TOKENS, "do_sample": False},
                           "metric_list": [{"metric": METRIC, "aggregation": "mean", "higher_is_better": True,
                                            "implementation": "rouge-score RougeScorer(['rougeL'], use_stemmer=False) F1"}]}},
    }
    if log_samples:
        result["samples"] = {task: [{"doc_id": i, "doc": d, "target": d["Summary"], "resps": [[o]],
                                     "filtered_resps": [o], METRIC: s}
                                    for i, (d, o, s) in enumerate(zip(docs, outputs, scores))]}
    return result
