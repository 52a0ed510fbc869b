"""
A hand-written Qwen2 / Qwen2.5 decoder that loads and saves Hugging Face checkpoints.

Read this file top to bottom: the config, then the four building blocks (RMSNorm, rotary embeddings,
attention with a KV cache, SwiGLU MLP), then the model and its loss, then loading and saving. Module
names mirror the checkpoint (`model.layers.3.self_attn.q_proj.weight`), so `state_dict()` keys *are*
the checkpoint's keys and loading is a checked copy, not a rename table.

What it leaves out: sliding-window attention and scaled RoPE variants (YaRN, dynamic NTK). Qwen2.5
checkpoints ship with both switched off; configs that switch them on are refused rather than run wrong.
Dropout is left out too: s1 trains without it.

    python model.py PATH_OR_HUB_ID      # load a checkpoint and print what it is
"""

import json
import os
import sys
import tempfile
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# Config


class CheckpointError(ValueError):
    """A checkpoint that this model cannot load; the message says what is wrong and what to do."""


@dataclass
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int = 64
    rms_norm_eps: float = 1e-6  # 1e-6 in the Instruct configs, 1e-5 in some base configs: always read it
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True  # 0.5B-3B share the embedding with the output head
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @classmethod
    def from_hf(cls, d: dict) -> "Qwen2Config":
        """Build from a Hugging Face config.json dict, refusing what this model does not implement."""
        model_type = d.get("model_type")
        archs = d.get("architectures") or ["Qwen2ForCausalLM"]
        if model_type != "qwen2" or "Qwen2ForCausalLM" not in archs:
            raise CheckpointError(
                f"config.json describes model_type={model_type!r} {archs}, but this model is Qwen2ForCausalLM "
                "only (Qwen2 / Qwen2.5 dense checkpoints); use a Qwen2.5 checkpoint")
        if d.get("use_sliding_window"):
            raise CheckpointError(
                "config.json switches sliding-window attention on (use_sliding_window: true), which this model "
                "does not implement; Qwen2.5 checkpoints ship with it off: set it to false")
        # transformers 4 writes rope_theta + rope_scaling; transformers 5 writes rope_parameters
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(
                f"config.json asks for rope type {rope_type!r}; only plain RoPE is implemented: remove "
                "rope_scaling from config.json to run at the trained context length")
        if d.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"config.json has hidden_act={d['hidden_act']!r}; Qwen2 uses 'silu'")
        n_heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=n_heads,
            num_key_value_heads=d.get("num_key_value_heads") or n_heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            initializer_range=d.get("initializer_range", 0.02),
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32").replace("torch.", ""),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )

    def to_hf(self) -> dict:
        """The config.json that transformers reads back as the same Qwen2 model."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_scaling=None,
                 use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers,
                 attention_dropout=0.0, use_cache=True)
        return d


# -----------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in fp32 whatever the activation dtype: bf16 has too few mantissa bits for the mean
        # of squares. Cast back *before* the weight multiply, as Qwen2 was trained.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """cos and sin of the rotary angles, (B, T, head_dim) or (T, head_dim), computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=position_ids.device) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # (..., T, hd/2)
    # Qwen2 rotates the two *halves* of each head (rotate_half), not interleaved pairs as in
    # gpt-fast/Llama-Meta, so the angle table is two copies of the frequencies side by side.
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x: (B, n_head, T, hd); cos, sin: (B, T, hd) or (T, hd)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attend(q, k, v, mask=None):
    """q (B, nh, T, hd), k and v (B, n_kv, S, hd) -> (B, nh, T, hd). An explicit mask whenever there is one:
    is_causal=True would align a chunk decoded against a cached prefix to the wrong corner. enable_gqa
    lets n_head query heads share n_kv_head keys."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                          enable_gqa=q.size(1) != k.size(1))


class KVCache(nn.Module):
    """Preallocated keys and values for one layer, written at the positions being decoded. (sample.py
    decodes through engine.py's paged cache, which takes the same place in Attention.)"""

    def __init__(self, batch_size, max_seq_len, n_kv_heads, head_dim, dtype, device=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def forward(self, q, k, v, input_pos, mask):
        # input_pos: (T,) cache slots; k, v: (B, n_kv, T, hd). index_copy_ keeps the shapes static,
        # which is what lets a compiled decode step be captured as a CUDA graph.
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        # Attend only as far as the mask reaches: the caller decides how much of the cache is live.
        S = mask.size(-1)
        return attend(q, self.k[:, :, :S], self.v[:, :, :S], mask)


class Attention(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.n_kv_head = config.num_key_value_heads
        self.head_dim = config.head_dim
        # Qwen2 puts a bias on q, k and v but not on the output projection.
        self.q_proj = nn.Linear(config.hidden_size, self.n_head * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_head * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_head * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.hidden_size, bias=False)
        self.kv_cache: nn.Module | None = None  # KVCache below, or engine.py's PagedAttention

    def forward(self, x, cos, sin, input_pos=None, mask=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is None:
            y = attend(q, k, v, mask)  # (B, nh, T, hd)
        else:  # the cache stores k and v, then attends over all it holds
            y = self.kv_cache(q, k, v, input_pos, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, input_pos=None, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, input_pos, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Holds what the checkpoint calls `model.*`: embedding, decoder layers and the final norm."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


# -----------------------------------------------------------------------------
# The model


class Qwen2(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False  # the trainer switches this on for long sequences

    def init_weights(self, seed: int | None = None):
        """Random init for training from scratch (the tiny model) and for benchmarks of real shapes."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    t = torch.empty(p.shape, dtype=torch.float32).normal_(0, self.config.initializer_range, generator=gen)
                    p.copy_(t)
        return self

    def setup_cache(self, batch_size: int, max_seq_len: int, dtype=None, device=None):
        """Give every layer a preallocated KV cache; the forward pass then takes `input_pos`."""
        p = self.lm_head.weight
        for layer in self.model.layers:
            layer.self_attn.kv_cache = KVCache(batch_size, max_seq_len, self.config.num_key_value_heads,
                                               self.config.head_dim, dtype or p.dtype, device or p.device)

    def clear_cache(self):
        for layer in self.model.layers:
            layer.self_attn.kv_cache = None

    def forward(self, idx, targets=None, input_pos=None, position_ids=None, mask=None,
                loss_weights=None, loss_chunk=1024, last_only=False):
        """
        idx: (B, T) token ids. Returns logits (B, T, vocab) or, with `targets` (B, T), the cross-entropy
        loss: the mean over the targets that are not -100, or with `loss_weights` (B, T) the weighted
        sum (train.py weights each token by 1 / its sequence's number of targets). The loss never
        makes the (B, T, vocab) logits; see linear_cross_entropy, `loss_chunk` tokens at a time.
        `last_only` returns the last position's logits only, (B, 1, vocab): all a sampler needs after
        a prefill, without the (B, T, vocab) tensor (16 prompts of 1000 tokens would make ~10 GB of it).

        With a KV cache (setup_cache): `input_pos` (T,) are the cache slots being written and
        `mask` (B or 1, 1, T, S) says which of the first S cache slots each query may see (True =
        attend). Without a mask the usual causal mask over those slots is used. engine.py's paged
        cache takes its own `input_pos` and `mask` (see there); they are passed to it as they are.
        `position_ids` (B, T) or (T,) feed RoPE; they default to `input_pos` (or 0..T-1). A batch of
        left-padded prompts passes its own, counting from each row's first real token.
        """
        B, T = idx.shape
        cached = self.model.layers[0].self_attn.kv_cache is not None
        if cached:
            assert input_pos is not None, "a model with a KV cache needs input_pos"
            if mask is None:
                slots = torch.arange(int(input_pos[-1]) + 1, device=idx.device)
                mask = (slots[None, :] <= input_pos[:, None])[None, None]  # (1, 1, T, S)
        if position_ids is None:
            position_ids = input_pos if input_pos is not None else torch.arange(T, device=idx.device)

        x = self.model.embed_tokens(idx)  # (B, T, C)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training:
                # Keep only each block's input; recompute the block in the backward pass.
                x = checkpoint(layer, x, cos, sin, input_pos, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, input_pos, mask)
        x = self.model.norm(x)

        if targets is None:
            return self.lm_head(x[:, -1:] if last_only else x)
        return linear_cross_entropy(x, self.lm_head.weight, targets, loss_weights, loss_chunk)


# -----------------------------------------------------------------------------
# The loss: the output head and cross-entropy fused, one chunk of tokens at a time


def linear_cross_entropy(x, weight, targets, loss_weights=None, chunk=1024):
    """
    Cross-entropy of the logits x @ weight.T against targets (-100 = ignore), without ever holding the
    whole (T, vocab) fp32 logits: a 32768-token sequence with a 152064-row head would need ~20 GB for them.
    x (B, T, C), weight (vocab, C), targets (B, T). Returns sum(loss_weights * per-token loss), a scalar;
    without loss_weights, the mean over the targets (F.cross_entropy's default). Ignored targets count
    for nothing whatever their weight. The head has no bias, as in every Qwen2 checkpoint.
    """
    C = x.shape[-1]
    x, targets = x.reshape(-1, C), targets.reshape(-1)  # (N, C), (N,)
    ftype = torch.promote_types(x.dtype, torch.float32)  # of the softmax and the loss: fp32, or fp64
    trained = targets != -100
    if loss_weights is None:
        loss_weights = trained.to(ftype) / trained.sum().clamp(min=1)
    w = torch.where(trained, loss_weights.reshape(-1).to(ftype), 0.0)  # (N,)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return FusedLinearCrossEntropy.apply(x, weight, targets, w, chunk)
    return _loss_and_grads(x, weight, targets, w, chunk, need_dx=False, need_dw=False)[0]  # evaluation


def _softmax_and_loss(x, weight, targets):
    """The softmax of a chunk's logits x @ weight.T, (n, vocab) in fp32, and its cross-entropy (n,)."""
    # The matmul runs in the weights' dtype (bf16 accumulates in fp32 inside it), as lm_head(x).float()
    # would; the softmax is fp32, where bf16 would lose the small probabilities of a 152k vocabulary.
    # (fp64 stays fp64, for the tests.)
    logits = (x @ weight.T).to(torch.promote_types(x.dtype, torch.float32))
    # Written out and in place rather than logsumexp then exp: one (n, vocab) buffer and fewer passes
    # over it. On 2 CPU cores, for 1024 x 151936 logits: 0.3 s against 0.9-1.4 s, beside 1.3 s a matmul.
    m = logits.amax(dim=-1, keepdim=True)  # (n, 1)
    target_logit = logits.gather(1, targets.clamp(min=0)[:, None])  # ignored rows: any; their weight is 0
    p = logits.sub_(m).exp_()
    total = p.sum(dim=-1, keepdim=True)
    ce = (total.log() + m - target_logit).squeeze(1)  # log-sum-exp minus the target's logit
    return p.div_(total), ce


def _loss_and_grads(x, weight, targets, w, chunk, need_dx, need_dw):
    """sum(w * per-token loss) over the chunks, and d loss / dx, d loss / d weight where asked for."""
    grad_x = torch.empty_like(x) if need_dx else None
    # Summed over the chunks in fp32: a bf16 running sum would round away the later chunks' share.
    grad_w = torch.zeros_like(weight, dtype=w.dtype) if need_dw else None
    loss = torch.zeros((), dtype=w.dtype, device=x.device)
    for i in range(0, len(x), chunk):
        xs, ts, ws = x[i:i + chunk], targets[i:i + chunk], w[i:i + chunk]
        g, ce = _softmax_and_loss(xs, weight, ts)  # (n, vocab), (n,)
        loss += (ws * ce).sum()
        if not (need_dx or need_dw):
            continue
        g[torch.arange(len(ts), device=ts.device), ts.clamp(min=0)] -= 1  # softmax - onehot
        g = g.to(x.dtype)
        # The weights scale rows of g; applying them to the narrow sides of the two matmuls
        # (n x C each) saves a pass over the wide (n x vocab) one.
        if need_dx:
            grad_x[i:i + chunk] = (g @ weight) * ws[:, None]
        if need_dw:  # grad_w += g.T @ (w * xs)    (vocab, C)
            xw = (xs * ws[:, None]).to(x.dtype)
            if grad_w.dtype == x.dtype:
                grad_w.addmm_(g.T, xw)  # in place: no (vocab, C) temporary
            else:
                grad_w += g.T @ xw
    return loss, grad_x, grad_w


class FusedLinearCrossEntropy(torch.autograd.Function):
    """
    The loss and its gradients in one pass over the chunks, in the forward pass. Backpropagating
    through lm_head and cross-entropy would keep every chunk's logits (the memory we avoid), or
    recompute them in the backward pass (one more head matmul; the head is a large share of a
    small model's FLOPs). Instead each chunk's logits live only long enough to give
      d loss / d logits = w * (softmax - onehot(target))    (n, vocab), w the per-token weight,
    which two matmuls turn into the chunk's rows of d loss / dx and its share of d loss / d weight.
    Only those two, (N, C) and (vocab, C), are kept for backward(). The loss is linear in them, so
    backward() scales them by the incoming gradient (gradient accumulation divides the loss).
    The head's gradient is kept in fp32 (3.1 GB for 32B) from the loss to the first step of the backward
    pass, and left so: a bf16 sum over the chunks would change the numbers, and a second pass over the
    head in backward() would cost a matmul. It costs no peak memory either: in train.py's 32B run on 8
    GPUs at block 32768 the GPU holds at most 97.8 GB while it is alive, and peaks later, at 114.5 GB,
    inside a block's backward pass (27.8 GB, and 9.8 while it is alive, with both offloads; measured with
    memory.py's tracker).
    """

    @staticmethod
    def forward(ctx, x, weight, targets, w, chunk):
        loss, grad_x, grad_w = _loss_and_grads(x, weight, targets, w, chunk, *ctx.needs_input_grad[:2])
        ctx.grads = grad_x, grad_w
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("the fused loss keeps its gradients for one backward pass only")
        grad_x, grad_w = ctx.grads
        ctx.grads = None  # scaled in place below: a second backward would scale them twice
        if grad_x is not None:
            grad_x = grad_x.mul_(grad_loss)
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_x, grad_w, None, None, None


# -----------------------------------------------------------------------------
# Loading: a local directory or a hub repo id, safetensors only, one tensor at a time

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "merges.txt", "vocab.json", "tokenizer*"]


def resolve_checkpoint(path_or_repo_id: str) -> str:
    """A local directory as it is; anything else is taken as a hub repo id and downloaded."""
    if os.path.isdir(path_or_repo_id):
        return path_or_repo_id
    looks_like_repo = path_or_repo_id.count("/") == 1 and not path_or_repo_id.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise CheckpointError(f"{path_or_repo_id}: no such directory; give a checkpoint directory or a hub id "
                              "such as Qwen/Qwen2.5-0.5B-Instruct")
    try:
        from huggingface_hub import snapshot_download
        # safetensors, configs and tokenizer only: never the pickle .bin files some repos also carry
        return snapshot_download(path_or_repo_id, allow_patterns=HUB_FILES)
    except Exception as e:
        raise CheckpointError(f"{path_or_repo_id}: not a local directory and could not be downloaded from the "
                              f"hub ({type(e).__name__}); check the name, your network, or HF_TOKEN") from None


def load_config(ckpt_dir: str) -> Qwen2Config:
    path = os.path.join(ckpt_dir, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir}: no config.json; a Hugging Face checkpoint directory has one")
    with open(path) as f:
        return Qwen2Config.from_hf(json.load(f))


def safetensors_files(ckpt_dir: str) -> list[str]:
    """model.safetensors, or the shards that model.safetensors.index.json lists."""
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        missing = [n for n in names if not os.path.isfile(os.path.join(ckpt_dir, n))]
        if missing:
            raise CheckpointError(f"{ckpt_dir}: the index lists shards that are not there: {', '.join(missing)}; "
                                  "the download or copy is incomplete")
        return [os.path.join(ckpt_dir, n) for n in names]
    names = sorted(n for n in os.listdir(ckpt_dir) if n.endswith(".safetensors"))
    if names:
        return [os.path.join(ckpt_dir, n) for n in names]
    pickles = sorted(n for n in os.listdir(ckpt_dir) if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CheckpointError(
            f"{ckpt_dir}: only pickle weights ({', '.join(pickles)}), which are never loaded here because "
            "unpickling can run arbitrary code; convert a checkpoint you trust with transformers: "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR, safe_serialization=True)")
    raise CheckpointError(f"{ckpt_dir}: no *.safetensors weights found")


def check_checkpoint(model: nn.Module, files: list[str]) -> dict[str, str]:
    """Match checkpoint tensor names and shapes to the model before reading any data: {name: file}."""
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = model.config.tie_word_embeddings
    found, wrong_shape, unexpected = {}, [], []
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if tied and name == "lm_head.weight":
                    continue  # some tied checkpoints store the shared matrix twice; the embedding wins
                shape = tuple(f.get_slice(name).get_shape())
                if name not in expected:
                    unexpected.append(name)
                elif shape != expected[name]:
                    wrong_shape.append(f"{name} {list(shape)} (model wants {list(expected[name])})")
                else:
                    found[name] = file
    if tied:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(found) - {n.split(" ")[0] for n in wrong_shape})
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong_shape)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} {label} tensors: {shown}")
    if problems:
        raise CheckpointError(f"checkpoint does not match its config.json: {'; '.join(problems)}")
    return found


def from_pretrained(path_or_repo_id: str, dtype=None, device=None) -> Qwen2:
    """
    Load a Hugging Face Qwen2/Qwen2.5 checkpoint. The model is built on the meta device (no memory),
    given empty storage on `device`, and filled tensor by tensor from memory-mapped safetensors, so a
    32B checkpoint needs little more RAM than its weights. dtype defaults to the checkpoint's.
    """
    from safetensors import safe_open

    ckpt_dir = resolve_checkpoint(path_or_repo_id)
    config = load_config(ckpt_dir)
    dtype = dtype or getattr(torch, config.torch_dtype, torch.float32)
    with torch.device("meta"):
        model = Qwen2(config)
    placement = check_checkpoint(model, safetensors_files(ckpt_dir))  # raises before any weight is read
    model = model.to(dtype=dtype).to_empty(device=device or "cpu")
    if config.tie_word_embeddings:  # to_empty() made two storages; share one again
        model.lm_head.weight = model.model.embed_tokens.weight
    params = model.state_dict()
    for file in sorted(set(placement.values())):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name in placement:
                    with torch.no_grad():
                        params[name].copy_(f.get_tensor(name))
    return model.eval()


Qwen2.from_pretrained = staticmethod(from_pretrained)


# -----------------------------------------------------------------------------
# Saving: the Hugging Face layout, written atomically


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    return int(float(size[:-2]) * units[size[-2:].upper()])


def atomic_write(path: str, write):
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes the file private to its owner; a checkpoint is for sharing
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_hf_checkpoint(state_dict: dict, config: Qwen2Config, out_dir: str, max_shard_size="5GB"):
    """
    Write `state_dict` as config.json + safetensors (sharded with an index above max_shard_size), the
    layout transformers.AutoModelForCausalLM and from_pretrained() load. The trainer calls this with
    the full state dict gathered from FSDP; save_pretrained() with the model's own.
    """
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    if config.tie_word_embeddings:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    dtype_name = str(next(iter(state_dict.values())).dtype).replace("torch.", "")
    limit = _parse_size(max_shard_size)
    shards, size = [[]], 0
    for name, t in state_dict.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    # Remove weights of an earlier save that this one would not overwrite (a different shard count).
    for old in os.listdir(out_dir):
        if old.endswith(".safetensors") or old == "model.safetensors.index.json":
            os.unlink(os.path.join(out_dir, old))
    weight_map = {}
    for i, names in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: state_dict[n].detach().contiguous().cpu() for n in names}
        atomic_write(os.path.join(out_dir, fname), lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        weight_map.update({n: fname for n in names})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write(os.path.join(out_dir, "model.safetensors.index.json"), lambda p: dump_json(index, p))
    hf_config = dict(config.to_hf(), torch_dtype=dtype_name)
    atomic_write(os.path.join(out_dir, "config.json"), lambda p: dump_json(hf_config, p))


def dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def save_pretrained(self: Qwen2, out_dir: str, max_shard_size="5GB"):
    save_hf_checkpoint(self.state_dict(), self.config, out_dir, max_shard_size)


Qwen2.save_pretrained = save_pretrained


def num_params(model: nn.Module) -> int:
    """Unique parameters (a tied head is counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: python model.py PATH_OR_HUB_ID", file=sys.stderr)
        sys.exit(2)
    try:
        m = from_pretrained(sys.argv[1])
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    c = m.config
    print(f"Qwen2 {num_params(m) / 1e9:.3f}B params, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"heads {c.num_attention_heads}/{c.num_key_value_heads} kv, head_dim {c.head_dim}, vocab {c.vocab_size}, "
          f"tied={c.tie_word_embeddings}, eps={c.rms_norm_eps}, theta={c.rope_theta:g}, dtype={c.torch_dtype}")
