"""What each endpoint preset sends (conf/endpoint/): the paper presets keep their request shape
byte for byte; a current OpenAI model gets max_completion_tokens and no sampling fields, live and
in Batch API lines; a 400 that names a field the model does not take is one line and one request;
a retired preset warns once where it is picked."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, teacher_args
from tests.openai_server import OpenAITestServer
from tests.test_pipeline import assert_one_line_error
from tests.test_train_support import compose


def _request(i: int = 0):
    from alpacare.llm.client import Request

    return Request(key=str(i), messages=({"role": "user", "content": f"Question {i}?"},), temperature=0.7,
                   top_p=0.5, max_tokens=64, presence_penalty=1.5)


def _client(preset: str, url: str, **overrides):
    from omegaconf import OmegaConf

    from alpacare.llm.client import LLMClient

    cfg = compose([f"teacher={preset}", *(f"teacher.{k}={v}" for k, v in overrides.items())]).teacher
    OmegaConf.set_readonly(cfg, False)
    cfg.base_url = url
    return LLMClient(cfg, url, "not-needed", cache=None)


def _ask(client, tmp_path, n: int = 6) -> dict:
    results = {}
    client.run([_request(i) for i in range(n)], lambda r, c, e: results.__setitem__(r.key, (c, e)), desc="test",
               batch_log=tmp_path / "batches.jsonl")
    return results


def test_paper_presets_send_the_papers_fields_in_the_papers_order():
    for preset in ("gpt4", "gpt35_turbo", "claude2"):
        body = _client(preset, "http://127.0.0.1:9/v1").request_body(_request())
        assert list(body) == ["model", "messages", "temperature", "top_p", "max_tokens", "presence_penalty"], preset
        assert (body["temperature"], body["top_p"], body["max_tokens"], body["presence_penalty"]) == (0.7, 0.5, 64, 1.5)


@pytest.mark.parametrize("preset, budget", [("gpt55", "max_completion_tokens"), ("claude_sonnet55", "max_tokens")])
def test_current_presets_send_only_what_their_model_takes(preset, budget):
    body = _client(preset, "http://127.0.0.1:9/v1").request_body(_request())
    assert body[budget] == 64
    assert not {"temperature", "top_p", "presence_penalty"} & set(body)
    assert not {"max_tokens", "max_completion_tokens"} - {budget} & set(body)


def test_cache_keys_stay_for_the_paper_presets_and_split_for_a_new_shape():
    from alpacare.llm.client import endpoint_identity

    cfgs = {p: compose([f"teacher={p}"]).teacher for p in ("gpt4", "gpt35_turbo", "claude2", "gpt55", "claude_sonnet55")}
    # What the paper presets' cached answers and work logs were keyed under before this setting existed.
    assert endpoint_identity(cfgs["gpt4"], None) == "openai" == endpoint_identity(cfgs["gpt35_turbo"], None)
    assert endpoint_identity(cfgs["claude2"], cfgs["claude2"].base_url) == "https://api.anthropic.com/v1/"
    # The model's own sampling answers differently from the sampling the stage asked for.
    assert endpoint_identity(cfgs["gpt55"], None) == "openai|max_completion_tokens|default-sampling"
    assert endpoint_identity(cfgs["claude_sonnet55"], cfgs["claude_sonnet55"].base_url).endswith("|default-sampling")


@pytest.mark.parametrize("batch", [False, True], ids=["live", "batch"])
def test_a_new_model_answers_the_current_preset(tmp_path, batch):
    with OpenAITestServer(new_model=True, batch_run_s=0.05) as server:
        results = _ask(_client("gpt55", server.url, batch=batch, batch_poll_s=0.05), tmp_path)
        state = server.state
    assert all(c is not None and not e for c, e in results.values()), results
    bodies = [r["body"] for b in state.batches.values() for r in b["requests"]] if batch else state.requests
    assert len(bodies) == 6 and state.rejected_params == []
    assert all(b["max_completion_tokens"] == 64 and not {"max_tokens", "temperature", "top_p"} & set(b) for b in bodies)


def test_a_batch_of_fields_the_model_rejects_stops_with_the_setting_to_change(tmp_path):
    from alpacare.errors import EndpointError

    with OpenAITestServer(new_model=True, batch_run_s=0.05) as server:
        with pytest.raises(EndpointError, match=r"'max_tokens'.*set teacher\.max_tokens_param=max_completion_tokens"):
            _ask(_client("openai_compatible", server.url, model="m", batch=True, batch_poll_s=0.05), tmp_path)
        assert len(server.state.batches) == 1 and server.state.rejected_params == ["max_tokens"] * 6


@pytest.mark.parametrize("args, param, setting", [
    # A paper preset against a server of a reasoning-era model (OpenAI's own API now answers so).
    (["teacher=gpt4"], "max_tokens", "teacher.max_tokens_param=max_completion_tokens"),
    (["teacher=openai_compatible", "teacher.model=test-teacher", "teacher.max_tokens_param=max_completion_tokens",
      "instructions.temperature=0.7"], "temperature", "teacher.sampling_params=false"),
], ids=["max_tokens", "temperature"])
def test_a_rejected_field_is_one_line_after_one_request(tmp_path, args, param, setting):
    with OpenAITestServer(new_model=True) as server:
        proc = run_cli([*args, f"teacher.base_url={server.url}", "teacher.max_concurrency=8", "stages=[instructions]",
                        "instructions.count=40", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
                       timeout=120, OPENAI_API_KEY="sk-test")
        state = server.state
    assert_one_line_error(proc, f"'{param}'", setting)
    assert len(state.requests) == 1 and state.rejected_params == [param]
    warnings = [ln for ln in proc.stdout.splitlines() if "retired" in ln]
    if args[0] == "teacher=gpt4":  # the retired preset says so once, naming its replacement
        assert len(warnings) == 1 and "teacher=gpt4" in warnings[0] and "teacher=gpt55" in warnings[0], proc.stdout
    else:
        assert warnings == []


def test_the_default_shape_is_unchanged_against_an_ordinary_server(tmp_path):
    # openai_compatible keeps the paper's fields: an ordinary server (vLLM, llama.cpp) takes them.
    with OpenAITestServer() as server:
        proc = run_cli([*teacher_args(server), "stages=[instructions]", "instructions.count=4", "logger=none",
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
        bodies = server.state.requests
    assert proc.returncode == 0, proc.stderr
    assert bodies and all("max_tokens" in b and "temperature" in b and "max_completion_tokens" not in b for b in bodies)


def test_an_unknown_budget_field_is_one_line_before_any_stage(tmp_path):
    proc = run_cli(["teacher=gpt55", "teacher.max_tokens_param=max_output_tokens", "stages=[instructions]",
                    "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120, OPENAI_API_KEY="sk-test")
    assert_one_line_error(proc, "teacher.max_tokens_param", "max_completion_tokens")
    assert not (tmp_path / "run" / "instructions").exists()
