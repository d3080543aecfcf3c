"""Predict throughput: batched generation (the predict stage) against one-at-a-time generation
(what the AlpaCare release's inference does), side by side in one run on the same prompts.

    python benchmarks/bench_predict.py                      # embedded SmolLM2-135M, 32 MedInstruct-test items
    python benchmarks/bench_predict.py --n 64 --max-new-tokens 128 --batch-size 32 --model DIR

Baseline, as in the release: each prompt alone through ``generate`` (greedy), the whole sequence
decoded and split on "Response:". Ours: ``alpacare.evaluation.inference.generate``, length-sorted batches
with left padding, only new tokens decoded. Both get the same new-token budget. Prints items/s,
new tokens/s, the speed-up, and how many answers agree.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def release_style(im, prompts, max_new_tokens: int) -> tuple[list[str], int]:
    import torch

    answers, new_tokens = [], 0
    for prompt in prompts:
        ids = im.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = im.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                    temperature=None, top_p=None, top_k=None)
        new_tokens += out.shape[1] - ids["input_ids"].shape[1]
        text = im.tokenizer.decode(out[0], skip_special_tokens=True)
        answers.append(text.split("Response:")[-1].strip())
    return answers, new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model dir or HF id (default: the embedded SmolLM2-135M)")
    parser.add_argument("--n", type=int, default=32, help="MedInstruct-test items")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from alpacare.config import ModelConfig
    from alpacare.data.eval_sets import load_items
    from alpacare.data.fetch import default_cache_dir
    from alpacare.evaluation.inference import Decoding, generate, load_for_inference
    from alpacare.training.models import resolve_model_path
    from alpacare.prompts.alpaca import format_prompt

    import torch

    source = args.model or str(resolve_model_path(ModelConfig(), default_cache_dir()))
    im = load_for_inference(source, "--model")
    prompts = [format_prompt(it["instruction"], it["input"]) for it in load_items("medinstruct")[: args.n]]
    print(f"model {source}, {len(prompts)} MedInstruct-test prompts, {args.max_new_tokens} new tokens max, "
          f"{torch.get_num_threads()} threads, dtype {im.dtype}")

    started = time.perf_counter()
    baseline, baseline_tokens = release_style(im, prompts, args.max_new_tokens)
    baseline_s = time.perf_counter() - started

    started = time.perf_counter()
    ours = generate(im, prompts, Decoding(args.max_new_tokens), batch_size=args.batch_size)
    ours_s = time.perf_counter() - started
    ours_tokens = sum(g.new_tokens for g in ours)

    agree = sum(a == g.text for a, g in zip(baseline, ours))
    print(f"{'config':<34}{'seconds':>9}{'items/s':>9}{'new tok/s':>11}")
    print(f"{'one at a time (AlpaCare release)':<34}{baseline_s:>9.1f}{len(prompts) / baseline_s:>9.2f}"
          f"{baseline_tokens / baseline_s:>11.1f}")
    print(f"{f'batched x{args.batch_size} (predict stage)':<34}{ours_s:>9.1f}{len(prompts) / ours_s:>9.2f}"
          f"{ours_tokens / ours_s:>11.1f}")
    print(f"speed-up (items/s): {baseline_s / ours_s:.2f}x")
    print(f"identical answers: {agree}/{len(prompts)} (greedy on the same prompts)")


if __name__ == "__main__":
    main()
