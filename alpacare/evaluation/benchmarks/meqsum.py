"""lm-eval's ``meqsum`` task functions, importable offline.

lm-eval's own module (``lm_eval/tasks/meqsum/utils.py``) loads four ``evaluate`` metrics from the
Hugging Face hub when it is imported (bleu, rouge, bertscore, bleurt), so neither ``lm_eval --tasks
meqsum`` nor a task that points ``!function`` at it can run offline. ``alpacare_meqsum``
(tasks/meqsum/alpacare_meqsum.yaml) is lm-eval's YAML with these functions in its place:

- ``doc_to_text`` / ``doc_to_target``: upstream's (the text after "MESSAGE:", and the summary);
- ``process_results``: upstream's ``process_results_gen`` for its ROUGE scores, computed by
  ``rouge-score`` as ``evaluate``'s rouge metric does (``RougeScorer``, no stemmer, the default
  tokenizer; for the one pair upstream passes, the bootstrap's "mid" F1 is that pair's F1). An empty
  prediction or reference scores NaN, as upstream, and the task aggregates with ``nanmean``: such an
  item drops out of the mean instead of counting as 0.

``alpacare_meqsum_alpaca`` asks the same with the Alpaca template the models of this framework are
trained with (their tokenizer's chat template; ``doc_to_text_alpaca``): lm-eval's bare prompt makes
an instruction-tuned model open with a blank line, which ends the generation empty, so on such
models nearly every item drops out. Same items, targets and scoring; a second name, not a change.

BLEU, BERTScore and BLEURT are left out: each needs files from the hub (the last two a model).
tests/test_benchmark_tasks.py checks prompts, targets and scores against lm-eval's own task.
"""

from __future__ import annotations

import functools
import math
from typing import Any

# The paper reports ROUGE-L: first, so it is the task's headline in stats and the report.
ROUGE_TYPES = ("rougeL", "rouge1", "rouge2")


def doc_to_text(doc: dict[str, Any]) -> str:
    text = doc["CHQ"]
    idx = text.find("MESSAGE")
    return text[idx + 9:] if idx != -1 else text  # upstream's slice: past "MESSAGE: "


# lm-eval's task description without its "Instructions: " label, word for word (typo included).
ALPACA_INSTRUCTION = "The following text is contains a medical question. Extract and summarize the question."


def doc_to_text_alpaca(doc: dict[str, Any]) -> str:
    from alpacare.prompts.alpaca import format_prompt

    return format_prompt(ALPACA_INSTRUCTION, doc_to_text(doc).strip())


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["Summary"]


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    prediction, reference = results[0], doc_to_target(doc)
    if len(reference) < 1 or len(prediction) < 1:
        return {name: math.nan for name in ROUGE_TYPES}
    scores = _scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}
