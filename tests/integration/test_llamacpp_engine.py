"""A GGUF folder in `slmforge chat` and `serve`: with llama-cpp-python installed (the optional
`llamacpp` extra) it answers like the PyTorch model it came from, adapters switched per request;
without it, one clear line names the extra. CI has no llama-cpp-python (it builds from source),
so there the second half runs; a machine with the extra runs the first."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.config.gguf import GgufConfig
from slmforge.optimize.gguf import export_gguf

pytestmark = pytest.mark.integration

SLMFORGE = str(Path(sys.executable).with_name("slmforge"))
ASK = [{"role": "user", "content": "What should I pack for Lisbon?"}]
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def gguf_folder(tiny_llama, llama_adapters, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "q8"
    adapters = [f"{name}={path}" for name, path in llama_adapters.items()]
    return export_gguf(GgufConfig(model=str(tiny_llama), out=out, precision="q8_0",
                                  adapter=adapters))  # fmt: skip


def test_a_gguf_folder_answers_like_pytorch_or_names_the_extra(
    gguf_folder, tiny_llama, llama_adapters
) -> None:
    if not HAS_LLAMA_CPP:
        done = subprocess.run([SLMFORGE, "chat", "--model", str(gguf_folder)], input="hi\n",
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2
        assert "a GGUF folder needs the 'llama-cpp-python' package: pip install " in done.stderr
        assert "slmforge[llamacpp]" in done.stderr and "Traceback" not in done.stderr
        return
    from slmforge.runtime.engine import GenParams, complete
    from slmforge.runtime.specs import load_engine
    from slmforge.runtime.torch_engine import TorchEngine

    gguf = load_engine(str(gguf_folder))
    torch = TorchEngine(tiny_llama, adapters={k: str(v) for k, v in llama_adapters.items()})
    assert sorted(gguf.adapters()) == sorted(llama_adapters)
    for adapter in (None, *llama_adapters):
        greedy = GenParams(max_tokens=12)
        assert (
            complete(gguf, ASK, greedy, adapter).text == complete(torch, ASK, greedy, adapter).text
        )
    seeded = GenParams(max_tokens=12, temperature=0.9, seed=4)
    assert complete(gguf, ASK, seeded).text == complete(gguf, ASK, seeded).text
