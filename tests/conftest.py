"""Shared test helpers: tiny random Qwen2 checkpoints made with transformers, and the real data in ../shared."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The project's real data (Qwen2.5 tokenizer, MATH500, AIME, s1K questions) sits beside the clone in
# ../shared/data on the team's machines; a user's clone has none, and the tests that need it skip.
SHARED_DATA = Path(os.environ.get("S1_SHARED_DATA", ROOT.parent / "shared" / "data"))
QWEN_TOKENIZER = SHARED_DATA / "qwen2.5-tokenizer"

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_hf_config(vocab_size=128, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2,
                   intermediate_size=96, tie=True, **kw):
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       num_key_value_heads=num_kv_heads, tie_word_embeddings=tie, rope_theta=1e6,
                       rms_norm_eps=1e-6, max_position_embeddings=512, **kw)


def make_tiny_checkpoint(path, seed=0, **kw):
    """Save a random transformers Qwen2ForCausalLM in HF format; returns (path, the HF model)."""
    from transformers import Qwen2ForCausalLM
    torch.manual_seed(seed)
    ref = Qwen2ForCausalLM(tiny_hf_config(**kw)).eval()
    # transformers' default init leaves the logits nearly flat; wider weights make argmax decisive
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2 if p.dim() > 1 else 0.05)
    ref.save_pretrained(path)
    return str(path), ref


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return make_tiny_checkpoint(tmp_path / "tiny")


@pytest.fixture(scope="session")
def qwen_tokenizer():
    if not (QWEN_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip("needs ../shared/data/qwen2.5-tokenizer (the team's shared data)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))


@pytest.fixture
def fresh_compile():
    """torch.compile with nothing compiled before; returns a function that counts the graphs made since."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    yield lambda: counters["stats"]["unique_graphs"]
    torch._dynamo.reset()


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile through the aot_eager backend: it traces as a GPU compile does (dynamo, then
    functionalisation and autograd's joint graph) without generating kernels, so it takes seconds on any CPU."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **kw: real_compile(*a, **dict(kw, backend="aot_eager")))


def run_torchrun(script, args, nproc=2):
    """script under torchrun with nproc CPU processes (gloo) on a free local port; fails on a non-zero exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), str(script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def read_jsonl(path):
    """The rows of a jsonl file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    """rows as a jsonl file at path; returns the path as a str, as the command lines take it."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)
