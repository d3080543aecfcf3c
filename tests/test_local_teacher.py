"""The embedded teacher: llama.cpp's server on loopback, started and stopped with the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from alpacare.llm.server import local_server
from alpacare.training.models import embedded_gguf_path


def test_embedded_gguf_is_located_without_importing_llm():
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm" not in sys.modules


def test_server_answers_json_schema_and_stops(tmp_path):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"]}
    with local_server() as url:
        assert url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=url, api_key="not-needed")
        reply = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Is aspirin an NSAID?"}],
            max_tokens=20, temperature=0, response_format={"type": "json_object", "schema": schema})
        assert reply.choices[0].message.content.replace(" ", "") in ('{"answer":"yes"}', '{"answer":"no"}')
        assert reply.usage.completion_tokens > 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/models", timeout=2)


def test_server_dies_with_a_killed_parent():
    code = ("from alpacare.llm.server import local_server\n"
            "import time, httpx\n"
            "with local_server() as url:\n"
            "    print(url, flush=True)\n"
            "    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        url = parent.stdout.readline().strip()
        assert httpx.get(f"{url}/models", timeout=5).status_code == 200
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/models", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(0.2)
    raise AssertionError("the local teacher server outlived its parent")
