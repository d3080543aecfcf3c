"""train.template=chat and the training input formats (issue 20, items 7 and 8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alpacare.errors import ConfigError, DataError
from alpacare.prompts.alpaca import has_input
from alpacare.prompts.chat import chat_prompt, end_of_turn_id, user_content
from alpacare.training.data import IGNORE_INDEX, load_training_records, tokenize_examples
from tests.test_train_support import (  # noqa: F401  (fixtures)
    RECORDS, cache_dir, run_train, smollm_tokenizer_dir, tiny_model_dir, train_cfg, write_records,
)

NO_INPUT = [{**r, "input": ""} for r in RECORDS if not has_input(r["input"])]


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_chat_labels_are_the_assistant_content_and_end_of_turn(smollm_tokenizer_dir):
    tok = _tokenizer(smollm_tokenizer_dir)
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == "<|im_end|>"  # derived from the template
    records = [RECORDS[2], {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                         {"role": "user", "content": "Define fever."},
                                         {"role": "assistant", "content": "A body temperature above 38 C."}]}]
    examples, stats = tokenize_examples(records, tok, 512, "chat")
    assert stats.examples == 2 and stats.boundary_merged == 0
    for example, record, answer in zip(examples, records, [RECORDS[2]["output"], "A body temperature above 38 C."]):
        learned = example.labels[example.labels != IGNORE_INDEX].tolist()
        assert tok.decode(learned) == answer + "<|im_end|>"
        context = record["messages"][:-1] if "messages" in record else [
            {"role": "user", "content": user_content(record["instruction"], record["input"])}]
        prompt = tok(chat_prompt(tok, context), add_special_tokens=False)["input_ids"]
        assert example.input_ids[: example.prompt_length].tolist() == prompt
    assert "Hello." in tok.decode(examples[1].input_ids[: examples[1].prompt_length])  # earlier turns: context


def _save_formats(tmp_path: Path) -> dict[str, Path]:
    import datasets

    messages = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
                for r in NO_INPUT]
    sharegpt = [{"conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
                for r in NO_INPUT]
    paths = {"alpaca": write_records(tmp_path / "alpaca.json", NO_INPUT),
             "messages": tmp_path / "messages.jsonl", "sharegpt": tmp_path / "sharegpt.json",
             "parquet": tmp_path / "train.parquet", "datasets": tmp_path / "hf_dir"}
    paths["messages"].write_text("".join(json.dumps(m) + "\n" for m in messages))
    paths["sharegpt"].write_text(json.dumps(sharegpt))
    datasets.Dataset.from_list(NO_INPUT).to_parquet(str(paths["parquet"]))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(messages)}).save_to_disk(str(paths["datasets"]))
    return paths


def test_every_input_format_gives_the_alpaca_examples(tmp_path, smollm_tokenizer_dir):
    tok = _tokenizer(smollm_tokenizer_dir)
    paths = _save_formats(tmp_path)
    for template in ("alpaca", "chat"):
        reference, _ = tokenize_examples(load_training_records(paths["alpaca"], template), tok, 256, template)
        for name, path in paths.items():
            examples, _ = tokenize_examples(load_training_records(path, template), tok, 256, template)
            assert [(e.input_ids.tolist(), e.prompt_length) for e in examples] == \
                   [(e.input_ids.tolist(), e.prompt_length) for e in reference], (name, template)


def test_bad_conversations_are_one_line_naming_the_record(tmp_path):
    two_turns = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                              {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    cases = {
        "multi.jsonl": ([NO_INPUT[0], two_turns], "alpaca", "record 2: a system message or several turns need train.template=chat"),
        "order.jsonl": ([{"messages": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}]}], "chat",
                        "record 1: turns must alternate"),
        "role.jsonl": ([NO_INPUT[0], {"conversations": [{"from": "bot", "value": "x"}]}], "chat", "record 2: turn 1 needs a role"),
        "alpaca.jsonl": ([NO_INPUT[0], {"instruction": "x"}], "chat", "record 2 is missing the field 'output'"),
    }
    for name, (rows, template, message) in cases.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(DataError) as e:
            load_training_records(path, template)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)
    assert load_training_records(tmp_path / "multi.jsonl", "chat")[1] == two_turns


def test_train_chat_then_predict_uses_the_training_prompt_tokens(tmp_path, tiny_model_dir, cache_dir):
    """The issue's test: train with chat (1 step), then the predict path formats and tokenizes each
    prompt exactly as training did, stops at <|im_end|>, and answers."""
    from alpacare.evaluation.inference import Decoding, generate, load_for_inference

    data = write_records(tmp_path / "data.json")
    run_dir = tmp_path / "run"
    run_train(train_cfg(data, cache_dir, "train.template=chat", "train.max_steps=1", "tuning=full",
                        model_dir=tiny_model_dir), run_dir)
    model_dir = run_dir / "train" / "model"
    assert json.loads((model_dir / "prompt_template.json").read_text()) == {"template": "chat", "end_of_turn": "<|im_end|>"}
    im = load_for_inference(str(model_dir), "predict.model", device="cpu")  # template: from the model dir
    assert im.template == "chat" and end_of_turn_id(im.tokenizer) in im.stop_ids()
    train_examples, _ = tokenize_examples(load_training_records(data, "chat"), _tokenizer(model_dir), 128, "chat")
    for record, example in zip(RECORDS, train_examples):
        assert im.encode(im.prompt(record["instruction"], record["input"])) == example.input_ids[: example.prompt_length].tolist()
    answers = generate(im, [im.prompt(RECORDS[0]["instruction"])], Decoding(max_new_tokens=3), batch_size=1)
    assert answers[0].new_tokens <= 3
    assert load_for_inference(str(model_dir), "predict.model", device="cpu", template="alpaca").template == "alpaca"


def test_chat_without_a_chat_template_stops_before_training(tmp_path, tiny_model_dir, cache_dir):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="^train.template=chat: the tokenizer has no chat template"):
        run_train(train_cfg(write_records(tmp_path / "d.json"), cache_dir, "train.template=chat", model_dir=model),
                  tmp_path / "run")
    assert not (tmp_path / "run" / "train" / "model").exists()


def test_lm_eval_contexts_use_the_chat_template_the_model_dir_records(tmp_path, tiny_model_dir):
    """A model dir recording ``chat`` gets lm-eval's apply_chat_template (the request's context is the
    rendered conversation); one recording nothing keeps lm-eval's plain context."""
    pytest.importorskip("lm_eval")
    from alpacare.evaluation.benchmarks import runner, tasks_index
    from alpacare.stages.benchmark import build_lm
    from tests.test_benchmark_user_tasks import user_tasks
    from tests.test_train_support import compose

    chat_model = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, chat_model)
    (chat_model / "prompt_template.json").write_text(json.dumps({"template": "chat"}))
    user = user_tasks(tmp_path / "u")
    task_dir = tasks_index.prepare_task_dir(tmp_path / "tasks", tmp_path / "data", {})
    cfg = compose(["benchmark.device=cpu", "benchmark.batch_size=1"]).benchmark
    contexts = {}
    for model in (chat_model, tiny_model_dir):
        lm, im = build_lm(cfg, str(model), tmp_path / "merged")
        results = runner.run_lm_eval(lm, ["my_task"], task_dir, str(user), limit=1, seed=1234, log_samples=True,
                                     num_fewshot=0, template=im.template)
        contexts[im.template] = results["samples"]["my_task"][0]["arguments"][0][0]
    assert contexts["chat"].startswith("<|im_start|>system\n") and "<|im_start|>user\nQ: Which organ" in contexts["chat"]
    assert contexts["chat"].endswith("<|im_start|>assistant\n")
    assert contexts["alpaca"].startswith("Q: Which organ")


def test_datasets_dir_trains_and_a_template_change_is_refused_on_resume(tmp_path, tiny_model_dir, cache_dir):
    """train.data may be a datasets directory; the template is part of the training fingerprint; a
    merged LoRA model keeps the template record."""
    paths = _save_formats(tmp_path)
    run_dir = tmp_path / "run"
    run_train(train_cfg(paths["datasets"], cache_dir, "train.template=chat", "train.max_steps=1", "tuning=lora",
                        "tuning.merge_adapter=true", model_dir=tiny_model_dir), run_dir)
    merged = json.loads((run_dir / "train" / "model_merged" / "prompt_template.json").read_text())
    assert merged["template"] == "chat"
    with pytest.raises(ConfigError, match=r"other settings \(train.template: chat -> None\)"):
        run_train(train_cfg(paths["datasets"], cache_dir, "train.max_steps=1", "tuning=lora", model_dir=tiny_model_dir), run_dir)


@pytest.mark.slow
def test_embedded_smollm2_trains_with_chat_and_predicts_on_the_training_prompt(tmp_path, cache_dir):
    """The issue's test on the embedded SmolLM2-135M-Instruct (converted tokenizer keeps the GGUF's
    chat template): 1 LoRA step with chat, then predict's prompt tokens equal training's, and it answers."""
    from alpacare.evaluation.inference import Decoding, generate, load_for_inference

    data = write_records(tmp_path / "data.json", RECORDS[:4])
    run_dir = tmp_path / "run"
    run_train(train_cfg(data, cache_dir, "train.template=chat", "train.max_steps=1"), run_dir)
    model_dir = run_dir / "train" / "model"
    im = load_for_inference(str(model_dir), "predict.model", device="cpu")
    assert im.template == "chat" and im.tokenizer.convert_ids_to_tokens(end_of_turn_id(im.tokenizer)) == "<|im_end|>"
    examples, _ = tokenize_examples(load_training_records(data, "chat"), _tokenizer(model_dir), 128, "chat")
    for record, example in zip(RECORDS[:4], examples):
        assert im.encode(im.prompt(record["instruction"], record["input"])) == example.input_ids[: example.prompt_length].tolist()
    answer = generate(im, [im.prompt(RECORDS[0]["instruction"])], Decoding(max_new_tokens=32), batch_size=1)[0]
    assert answer.text and "<|im_end|>" not in answer.text and "<|im_start|>" not in answer.text


def test_unknown_templates_are_refused_by_validate():
    from alpacare.config import validate
    from tests.test_train_support import compose

    for key in ("train", "predict", "benchmark"):
        with pytest.raises(ConfigError, match=rf"^{key}.template: must be"):
            validate(compose([f"{key}.template=vicuna"]))
