"""model.py against transformers' Qwen2ForCausalLM: logits, checkpoints both ways, loss, KV cache, errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import ROOT, make_tiny_checkpoint
from model import CheckpointError, Qwen2, Qwen2Config, linear_cross_entropy

# (tie, heads, kv heads, head_dim, vocab): GQA ratios 1, 2 and 7; head_dim 32 and 64; odd vocab sizes
SHAPES = [
    (True, 4, 4, 32, 101),
    (False, 4, 2, 32, 128),
    (True, 7, 1, 64, 333),
    (False, 14, 2, 64, 257),
]
# Measured on CPU: fp32 logits agree exactly (max abs difference 0.0) on all four shapes. The bound
# leaves room for other BLAS builds while staying far below any real mistake (a wrong RoPE convention
# moves logits by ~1e-1 at this weight scale).
FP32_TOL = 1e-4


def shape_kwargs(tie, heads, kv, hd, vocab):
    return dict(tie=tie, num_heads=heads, num_kv_heads=kv, hidden_size=heads * hd, vocab_size=vocab)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"tie{int(s[0])}-h{s[1]}-kv{s[2]}-hd{s[3]}-v{s[4]}")
def test_logits_match_transformers_fp32(tmp_path, shape):
    path, ref = make_tiny_checkpoint(tmp_path / "ckpt", **shape_kwargs(*shape))
    ours = Qwen2.from_pretrained(path)
    idx = torch.randint(0, shape[4], (2, 23))
    with torch.no_grad():
        diff = (ours(idx) - ref(idx).logits).abs().max().item()
    assert diff <= FP32_TOL, diff


def test_logits_match_transformers_bf16(tmp_path):
    path, ref = make_tiny_checkpoint(tmp_path / "ckpt", **shape_kwargs(*SHAPES[2]))
    ours = Qwen2.from_pretrained(path, dtype=torch.bfloat16)
    assert ours.lm_head.weight.dtype == torch.bfloat16
    ref = ref.to(torch.bfloat16)
    idx = torch.randint(0, 333, (2, 23))
    with torch.no_grad():
        a, b = ours(idx).float(), ref(idx).logits.float()
    # Same bf16 operations in the same order: any difference is a rounding step of bf16 (8 bits of
    # mantissa), i.e. relative 2^-8 of the logit scale, never a structural one.
    assert (a - b).abs().max().item() <= 2 ** -8 * a.abs().max().item() * 4
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.95


def test_dtype_defaults_to_checkpoint(tmp_path):
    path, ref = make_tiny_checkpoint(tmp_path / "ckpt")
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert Qwen2.from_pretrained(str(tmp_path / "bf16")).lm_head.weight.dtype == torch.bfloat16
    assert Qwen2.from_pretrained(path).lm_head.weight.dtype == torch.float32


def test_config_values_are_read_not_assumed(tmp_path):
    # 7B+ Qwen2.5 have 152064 rows and some base configs eps 1e-5; both must come from config.json
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt", vocab_size=152, tie=False)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    m = Qwen2.from_pretrained(path)
    assert m.config.rms_norm_eps == 1e-5 and m.model.norm.eps == 1e-5
    assert m.config.vocab_size == 152 and m.lm_head.weight.shape == (152, 64)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()


def test_transformers_4_style_config(tmp_path):
    # Real Qwen2.5 config.json files (written by transformers 4) carry rope_theta at the top level.
    d = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
         "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
         "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "use_sliding_window": False,
         "sliding_window": 32768, "max_window_layers": 21, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
         "max_position_embeddings": 32768, "hidden_act": "silu"}
    c = Qwen2Config.from_hf(d)
    assert (c.rope_theta, c.head_dim, c.torch_dtype, c.tie_word_embeddings) == (1e6, 64, "bfloat16", True)


def test_tied_head_shares_storage(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt", tie=True)
    m = Qwen2.from_pretrained(path)
    assert m.lm_head.weight is m.model.embed_tokens.weight


def test_save_then_transformers_loads_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM
    for i, shape in enumerate(SHAPES[:2]):
        path, ref = make_tiny_checkpoint(tmp_path / f"ckpt{i}", **shape_kwargs(*shape))
        ours = Qwen2.from_pretrained(path)
        out = tmp_path / f"ours{i}"
        ours.save_pretrained(str(out), max_shard_size="40KB")  # force several shards and an index
        assert (out / "model.safetensors.index.json").is_file()
        assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
        reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        idx = torch.randint(0, shape[4], (1, 19))
        with torch.no_grad():
            assert torch.equal(reloaded(idx).logits, ours(idx))
        if shape[0]:
            names = set().union(*(load_file(out / f).keys() for f in os.listdir(out) if f.endswith(".safetensors")))
            assert "lm_head.weight" not in names  # tied checkpoints store the matrix once


def test_save_pretrained_overwrites_cleanly(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    m = Qwen2.from_pretrained(path)
    out = tmp_path / "out"
    m.save_pretrained(str(out), max_shard_size="40KB")
    m.save_pretrained(str(out))  # one shard now: the old shards and index must not linger
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    Qwen2.from_pretrained(str(out))


def test_loads_transformers_sharded_checkpoint(tmp_path):
    _, ref = make_tiny_checkpoint(tmp_path / "ckpt", **shape_kwargs(*SHAPES[1]))
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ours = Qwen2.from_pretrained(str(tmp_path / "sharded"))
    idx = torch.randint(0, 128, (2, 11))
    with torch.no_grad():
        assert torch.equal(ours(idx), ref(idx).logits)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_loss_and_gradients_match_transformers(tmp_path, tie):
    # transformers shifts the labels itself: its loss on idx is ours on idx[:, :-1] against idx[:, 1:]
    path, ref = make_tiny_checkpoint(tmp_path / "ckpt", vocab_size=333, tie=tie)
    ours = Qwen2.from_pretrained(path)
    idx = torch.randint(0, 333, (2, 38))
    labels = idx.clone()
    labels[0, :10] = -100  # a prompt
    labels[1, 31:] = -100  # padding
    ref_loss = ref(idx, labels=labels).loss
    ref_loss.backward()
    loss = ours(idx[:, :-1], targets=labels[:, 1:], loss_chunk=16)  # 16 does not divide 2 x 37
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"):
        a, b = ours.get_parameter(name).grad, ref.get_parameter(name).grad
        assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item(), name


def full_loss(x, W, targets, weights=None):
    """The reference: F.cross_entropy on the whole logits."""
    ce = F.cross_entropy((x @ W.T).flatten(0, 1), targets.flatten(), reduction="none")
    if weights is None:
        return ce.sum() / (targets != -100).sum()
    return (ce * weights.flatten()).sum()


def loss_inputs(dtype=torch.float64, B=2, T=37, C=24, V=333):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, C, generator=gen, dtype=dtype).requires_grad_()
    W = (torch.randn(V, C, generator=gen, dtype=dtype) * 0.5).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, :9] = -100
    targets[1, 30:] = -100
    weights = torch.rand(B, T, generator=gen, dtype=dtype) + 0.1
    return x, W, targets, weights


def grads_of(loss, *tensors):
    gs = torch.autograd.grad(loss, tensors)
    return [loss.detach(), *gs]


@pytest.mark.parametrize("chunk", [1, 16, 37, 1000])
@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
def test_fused_loss_equals_full_cross_entropy_fp64(chunk, weighted):
    x, W, targets, weights = loss_inputs()
    weights = weights if weighted else None
    want = grads_of(full_loss(x, W, targets, weights), x, W)
    got = grads_of(linear_cross_entropy(x, W, targets, weights, chunk=chunk), x, W)
    for a, b in zip(got, want):
        assert a.dtype == torch.float64 and a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-12
    assert got[1][1, 30:].abs().max() == 0  # ignored targets: no gradient, whatever their weight


def test_fused_loss_scales_with_the_incoming_gradient():
    # gradient accumulation: (loss / n).backward(), twice into the same .grad
    x, W, targets, weights = loss_inputs()
    (0.5 * full_loss(x, W, targets, weights)).backward()
    want = x.grad.clone(), W.grad.clone()
    x.grad = W.grad = None
    for _ in range(2):
        (0.25 * linear_cross_entropy(x, W, targets, weights, chunk=16)).backward()
    assert torch.allclose(x.grad, want[0], rtol=0, atol=1e-12)
    assert torch.allclose(W.grad, want[1], rtol=0, atol=1e-12)
    loss = linear_cross_entropy(x, W, targets, weights, chunk=16)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()  # its saved gradients were scaled in place: refused, not silently wrong


def test_fused_loss_tied_weight_sums_both_gradients():
    # The tied head: the embedding lookup and the head each give the shared matrix a gradient.
    x, W, targets, weights = loss_inputs()
    idx = torch.randint(0, 333, (2, 37))
    h = lambda: torch.tanh(W[idx] + x.detach())  # (B, T, C) from the embedding rows
    want = torch.autograd.grad(full_loss(h(), W, targets, weights), W)[0]
    got = torch.autograd.grad(linear_cross_entropy(h(), W, targets, weights, chunk=10), W)[0]
    assert (got - want).abs().max().item() <= 1e-12


def test_fused_loss_without_grad_and_with_a_frozen_side():
    x, W, targets, weights = loss_inputs()
    want = full_loss(x, W, targets, weights).item()
    with torch.no_grad():  # evaluation: the loss alone
        loss = linear_cross_entropy(x, W, targets, weights, chunk=16)
    assert loss.grad_fn is None and abs(loss.item() - want) <= 1e-12
    for train_x in (False, True):  # only the head trains, then only what feeds it
        a, b = x.detach().requires_grad_(train_x), W.detach().requires_grad_(not train_x)
        trained = a if train_x else b
        got = torch.autograd.grad(linear_cross_entropy(a, b, targets, weights, chunk=16), trained)[0]
        ref = torch.autograd.grad(full_loss(a, b, targets, weights), trained)[0]
        assert (got - ref).abs().max().item() <= 1e-12


def test_fused_loss_bf16():
    # bf16 weights and activations: bf16 logits, an fp32 softmax, gradients returned in bf16
    x64, W64, targets, weights = loss_inputs()
    x, W = x64.detach().bfloat16().requires_grad_(), W64.detach().bfloat16().requires_grad_()
    loss = linear_cross_entropy(x, W, targets, weights, chunk=16)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == W.grad.dtype == torch.bfloat16
    xr, Wr = x.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    ref = full_loss(xr, Wr, targets, weights)  # the same bf16 numbers, in fp64
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 2 ** -8 * ref.item()
    for a, b in ((x.grad, xr.grad), (W.grad, Wr.grad)):
        err = (a.double() - b).abs().max().item() / b.abs().max().item()
        assert err <= 2 ** -6


def test_gradient_checkpointing_gives_same_gradients(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    m = Qwen2.from_pretrained(path).train()
    idx = torch.randint(0, 128, (1, 20))
    grads = []
    for ckpt in (False, True):
        m.zero_grad()
        m.gradient_checkpointing = ckpt
        m(idx, targets=idx).backward()
        grads.append(m.model.layers[1].self_attn.q_proj.weight.grad.clone())
    assert torch.allclose(*grads, atol=1e-6)


def test_kv_cache_decode_matches_full_forward(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt", **shape_kwargs(*SHAPES[2]))
    m = Qwen2.from_pretrained(path)
    idx = torch.randint(0, 333, (2, 24))
    with torch.no_grad():
        full = m(idx)
        m.setup_cache(batch_size=2, max_seq_len=64)
        steps = [m(idx[:, :10], input_pos=torch.arange(10))]  # prefill
        for t in range(10, 16):  # one token at a time
            steps.append(m(idx[:, t:t + 1], input_pos=torch.tensor([t])))
        steps.append(m(idx[:, 16:], input_pos=torch.arange(16, 24)))  # a chunk against the cached prefix
        m.clear_cache()
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= FP32_TOL


def test_kv_cache_with_left_padding_and_explicit_mask(tmp_path):
    # How a batch of prompts of different lengths runs: row 1 is padded on the left by 3 slots that
    # no query may see, and its positions count from its first real token.
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    m = Qwen2.from_pretrained(path)
    short = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        alone = m(short)
        m.setup_cache(batch_size=1, max_seq_len=16)
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
        slots = torch.arange(8)
        mask = (slots[None, :] <= slots[:, None]) & (slots[None, :] >= 3)
        pos = (slots - 3).clamp(min=0)
        out = m(padded, input_pos=slots, position_ids=pos[None], mask=mask[None, None])
    assert (out[:, 3:] - alone).abs().max().item() <= FP32_TOL


# -----------------------------------------------------------------------------
# Bad input: a specific exception with a message that names the problem, before anything is loaded


def expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as e:
        Qwen2.from_pretrained(str(path))
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)
    return str(e.value)


def edit_config(ckpt, **changes):
    p = ckpt / "config.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


def test_error_missing_path(tmp_path):
    expect_error(tmp_path / "nope", "no such directory")


def test_error_hub_id_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expect_error("nobody-here/no-such-model-s1", "could not be downloaded")


def test_error_no_weights_and_no_config(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    os.unlink(tmp_path / "ckpt" / "model.safetensors")
    expect_error(path, "no *.safetensors")
    os.unlink(tmp_path / "ckpt" / "config.json")
    expect_error(path, "no config.json")


def test_error_pickle_checkpoint_is_refused_not_unpickled(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    os.unlink(tmp_path / "ckpt" / "model.safetensors")
    # A file that would run code if unpickled: refusing it must not even open it.
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    expect_error(path, "pytorch_model.bin", "safe_serialization=True")


@pytest.mark.parametrize("changes,fragment", [
    (dict(model_type="llama", architectures=["LlamaForCausalLM"]), "'llama'"),
    (dict(model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"]), "'qwen2_moe'"),
    (dict(use_sliding_window=True), "sliding-window"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}), "'yarn'"),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}), "'dynamic'"),
])
def test_error_unsupported_config(tmp_path, changes, fragment):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", **changes)
    expect_error(path, fragment)


def test_error_missing_unexpected_and_misshaped_tensors(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(file)
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)
    tensors["model.norm.weight"] = torch.ones(65)
    save_file(tensors, file)
    msg = expect_error(path, "model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.o_proj.bias",
                       "model.norm.weight [65]")
    assert "1 missing" in msg and "1 unexpected" in msg and "1 wrongly shaped" in msg


def test_error_index_lists_absent_shard(tmp_path):
    _, ref = make_tiny_checkpoint(tmp_path / "ckpt")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    shard = sorted(f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors"))[-1]
    os.unlink(tmp_path / "sharded" / shard)
    expect_error(tmp_path / "sharded", shard)


def test_cli_prints_summary_and_fails_with_one_line(tmp_path):
    path, _ = make_tiny_checkpoint(tmp_path / "ckpt", tie=False)
    ok = subprocess.run([sys.executable, str(ROOT / "model.py"), path], capture_output=True, text=True)
    assert ok.returncode == 0 and "2 layers" in ok.stdout and "tied=False" in ok.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "model.py"), str(tmp_path / "missing")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "no such directory" in bad.stderr and "Traceback" not in bad.stderr
