"""``python -m alpacare.llm.llama_server ARGS``: llama-cpp-python's OpenAI-compatible server
(same arguments as ``python -m llama_cpp.server``), optionally with llama.cpp's extra weight
buffer types turned off.

Why: llama.cpp moves quantized weights into "extra" buffer types (repacked layouts, Intel AMX
tiles) when the CPU reports support. Some virtual machines report AMX but trap on its
instructions: on the 2-core Firecracker VM this project is tested on, the first matrix product
died with SIGILL (``tilezero`` in ``ggml_backend_amx_mul_mat``). Turning them off is llama.cpp's
``--no-repack``; llama-cpp-python exposes the field (``use_extra_bufts``) but not the flag, so
the default model parameters are wrapped here before the server starts.
"""

from __future__ import annotations

import os

NO_EXTRA_BUFFERS_ENV = "ALPACARE_LLAMA_NO_EXTRA_BUFTS"


def _without_extra_buffer_types() -> None:
    import llama_cpp.llama_cpp as native

    defaults = native.llama_model_default_params

    def model_params():
        params = defaults()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = model_params


def main() -> None:
    if os.environ.get(NO_EXTRA_BUFFERS_ENV) == "1":
        _without_extra_buffer_types()
    from llama_cpp.server.__main__ import main as serve

    serve()


if __name__ == "__main__":
    main()
