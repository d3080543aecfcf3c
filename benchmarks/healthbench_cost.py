"""What grading HealthBench costs: grader requests x tokens, measured on the shipped example
conversations (tests/data/healthbench/) and scaled to the full set.

Each rubric item is one grader request (simple-evals' system message + the grader template with the
conversation, the answer and the item; alpacare/prompts/healthbench.py). Prompt tokens are counted
on the shipped examples with the embedded SmolLM2 tokenizer (a 49k-token English BPE, offline; gpt-4.1's
o200k_base cannot be downloaded here, and counts English text within about 10% of it), and beside it
OpenAI's rule of thumb of 4 characters per token, with an answer of
``--answer-words`` words standing in for the model's (the answer is part of every request of its
conversation); completion tokens per verdict are ``--verdict-tokens`` (an assumption: a short
explanation and ``criteria_met`` in fenced JSON; not measured, no paid grader was called). Scaled to
HealthBench's 48,562 rubric items (5,000 conversations; the issue's and the paper's count).
Prices: the judge preset's (``--preset``, conf/endpoint/), live and with the Batch API discount.

    python benchmarks/healthbench_cost.py                    # judge=gpt41 (simple-evals' grader)
    python benchmarks/healthbench_cost.py --preset gpt55 --answer-words 400
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_RUBRIC_ITEMS = 48562
FULL_CONVERSATIONS = 5000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt41")
    p.add_argument("--answer-words", type=int, default=300)
    p.add_argument("--verdict-tokens", type=int, default=100)
    args = p.parse_args()

    import json

    import yaml
    from transformers import AutoTokenizer

    from alpacare.training.models import embedded_gguf_path

    from alpacare.prompts.healthbench import load_protocol, rubric_item
    from benchmarks.bench_healthbench import data_dir_with_protocol

    data_dir_with_protocol()
    protocol = load_protocol()
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    answer = " ".join(["word"] * args.answer_words)
    examples = [json.loads(line) for line in (REPO / "tests" / "data" / "healthbench" / "healthbench.jsonl").read_text().splitlines()]
    prompt_tokens, rule_of_thumb = [], []
    for ex in examples:
        for r in ex["rubrics"]:
            messages = protocol.messages(protocol.user_message(ex["prompt"], answer, rubric_item(r["criterion"], r["points"])))
            # chat format overhead: ~4 tokens per message and 3 to prime the reply (OpenAI's cookbook count)
            prompt_tokens.append(sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) + 4 for m in messages) + 3)
            rule_of_thumb.append(sum(len(m["content"]) / 4 + 4 for m in messages) + 3)
    per_request = sum(prompt_tokens) / len(prompt_tokens)
    preset = yaml.safe_load((REPO / "conf" / "endpoint" / f"{args.preset}.yaml").read_text())
    price_in, price_out, discount = preset["price_input_per_1m"], preset["price_output_per_1m"], preset.get("batch_discount", 1.0)
    total_in = per_request * FULL_RUBRIC_ITEMS
    total_out = args.verdict_tokens * FULL_RUBRIC_ITEMS
    live = (total_in * price_in + total_out * price_out) / 1e6
    print(f"measured on {len(prompt_tokens)} rubric items of {len(examples)} shipped conversations, answer {args.answer_words} words: "
          f"{per_request:,.0f} prompt tokens per grader request (SmolLM2 tokenizer; {sum(rule_of_thumb) / len(rule_of_thumb):,.0f} "
          "by 4 characters per token)")
    print(f"full HealthBench: {FULL_RUBRIC_ITEMS:,} requests x ({per_request:,.0f} prompt + {args.verdict_tokens} completion tokens) = "
          f"{total_in / 1e6:,.1f}M prompt + {total_out / 1e6:,.1f}M completion tokens")
    print(f"judge={args.preset} ({preset['model']}, ${price_in}/${price_out} per 1M): ${live:,.2f} live, "
          f"${live * discount:,.2f} with the Batch API (judge.batch=true)")
    print(f"per 100 conversations (~{FULL_RUBRIC_ITEMS / FULL_CONVERSATIONS * 100:,.0f} requests): ${live / FULL_CONVERSATIONS * 100:,.2f} live")


if __name__ == "__main__":
    main()
