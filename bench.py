"""
Benchmarks against the references, side by side in one run, on random weights of the real shapes (no
downloads): (1) decoding with sample.py's engine against transformers' generate, and the share of the
memory-bandwidth roofline it reaches (bandwidth measured in the same run), at a fixed batch and on an
evaluation-like workload (many prompts of skewed lengths: continuous batching against static batches,
and the KV cache held at peak); (2) a training step of
model.py (fused head + loss) + AdamW against transformers' Qwen2ForCausalLM with the same optimizer;
(3) the memory of the loss at a long sequence, fused in chunks against full logits; (4) bf16 logits against
fp32; (5) train.py's FSDP2 step (1 process) with each --offload choice side by side, tokens/s relative to
no offload, and memory.py's estimate against the measured peak. Every ratio compares numbers measured
here, now; results go to BENCHMARKS.md by hand.

    python bench.py                                    # CPU, fp32: decode at batch 1, training at T=1024,4096, loss
    python bench.py --decode-batch 1,16 --json bench.json
    python bench.py --skip decode                      # CPU: the training step and the loss memory only
    python bench.py --gpu --json bench-gpu.json        # one GPU (H200: a few minutes): compiled decode vs the
                                                       # HBM roofline, training MFU of a 1.5B shape at T=16384
                                                       # with activation checkpointing in bf16, bf16 vs fp32 logits,
                                                       # offload at 0.5B/1.5B, T=16384: estimate vs max_memory_allocated
    python bench.py --skip '' --decode-shape smoke --workload-shape smoke --workload 16,4 --train-shape smoke \
        --train-seq 64 --loss-seq 256 --compile         # every part in a minute on a tiny shape (tests/test_bench.py)

Training and loss runs each take a fresh process, so each peak memory is its own: peak RSS on CPU,
torch.cuda.max_memory_allocated on GPU. On CPU the training runs alternate and the faster of two counts.
On GPU both models train with bf16 weights and AdamW states (train.py keeps fp32 master weights under
FSDP; the matmuls of a step, which MFU counts, are the same). With --compile (on with --gpu) our blocks
are compiled as train.py --compile compiles them; transformers' model runs as users run it, eagerly.
What it leaves out: multi-GPU training (train.py's FSDP), and the KV cache in the roofline (at a short
context it is a tiny share of the bytes a step reads).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from memory import OFFLOADS, in_processes
from model import Qwen2, Qwen2Config, linear_cross_entropy, num_params
from engine import Engine, kv_bytes_per_token, weight_bytes_per_token
from sample import sample
from train import PEAK_BF16_FLOPS, training_flops

# -----------------------------------------------------------------------------
# Shapes (../shared/S1_NOTES.md) and defaults, spelled out once

VOCAB = 151936
SHAPES = {  # hidden, layers, heads, kv heads, head_dim, mlp
    "0.5B": (896, 24, 14, 2, 64, 4864),
    "1.5B": (1536, 28, 12, 2, 128, 8960),
    "3B": (2048, 36, 16, 2, 128, 11008),
    "cpu-small": (512, 4, 8, 2, 64, 2048),  # a training step of a few seconds on 2 CPU cores, real vocab
    "smoke": (64, 2, 4, 2, 16, 128),  # seconds for every part: the test that the script runs end to end
}
CPU = dict(decode_shape="0.5B", decode_batch="1", workload_shape="cpu-small", workload="64,16",
           train_shape="cpu-small", train_seq="1024,4096", checkpointing="off", loss_seq="4096,32768",
           skip="parity", offload_shapes="cpu-small", offload_seq=1024)
GPU = dict(decode_shape="1.5B", decode_batch="1,16", workload_shape="0.5B,1.5B", workload="256,64",
           train_shape="1.5B", train_seq="16384", checkpointing="on", loss_seq="32768", skip="",
           offload_shapes="0.5B,1.5B", offload_seq=16384)
PARTS = {"decode", "workload", "train", "loss", "parity", "offload"}
BANDWIDTH_PASSES = 8  # reads of the bandwidth matrix per timed round: sustained, as decoding reads
PROMPT_LEN = 16
SHORT_GEN = (16, 32)  # tokens most rows of the workload generate; an eighth generate 8-16 times as many
STATIC = "static cache (before)"  # the engine engine.py replaced, in the workload table
MATMULS = "matmuls alone"  # the decode row of run_matmuls: the weights' matrix products and nothing else
PARITY_SEQ = 512  # tokens per row of the bf16 parity check (2 rows)
WARM_STEPS = 8  # decode steps before the clock starts (allocation, compilation, CUDA graph capture)
TIMED_STEPS = 32
REPEATS = 2  # best of, for decode and training; ours and the reference alternate, so load from others hits both
TRAIN_STEPS = 2  # timed training steps, after one warm-up step
LOSS_HIDDEN = 64
LOSS_CHUNK = 1024  # train.py's --loss-chunk default
SERVE_TOKENS = 128  # per request of the serving benchmark
SERVE_TOKENIZER = "Qwen/Qwen2.5-0.5B-Instruct"  # its chat template and special tokens; the weights are random
SERVE_KV_GB = 2.0  # the KV cache of both paths: the server's must hold one request of the whole context
ADAMW = dict(lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-4)  # s1's


def config(shape: str) -> Qwen2Config:
    h, n, nh, kv, hd, mlp = SHAPES[shape]
    return Qwen2Config(vocab_size=VOCAB, hidden_size=h, num_hidden_layers=n, num_attention_heads=nh,
                       num_key_value_heads=kv, head_dim=hd, intermediate_size=mlp, tie_word_embeddings=True)


def reference_model(cfg: Qwen2Config, device, dtype):
    """transformers' Qwen2ForCausalLM of the same shape (its own init; load ours for the same weights)."""
    from transformers import Qwen2Config as HFConfig, Qwen2ForCausalLM
    with torch.device(device):
        return Qwen2ForCausalLM(HFConfig(**cfg.to_hf())).to(dtype)


def our_model(cfg: Qwen2Config, device, dtype):
    return Qwen2(cfg).init_weights(seed=0).to(device=device, dtype=dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# -----------------------------------------------------------------------------
# The machine: what it is, how busy it is, how fast it can read memory and multiply


def machine(device) -> dict:
    m = dict(date=time.strftime("%Y-%m-%d %H:%M %Z"), python=platform.python_version(), torch=torch.__version__,
             threads=torch.get_num_threads(), cores=os.cpu_count(), load=[round(x, 1) for x in os.getloadavg()])
    try:
        with open("/proc/cpuinfo") as f:
            m["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        m["cpu"] = platform.processor()
    if device.type == "cuda":
        m["gpu"] = torch.cuda.get_device_name()
    import transformers
    m["transformers"] = transformers.__version__
    return m


def measure_bandwidth(device) -> float:
    """
    Read bandwidth in bytes/s: the faster of summing a large matrix and multiplying it by a vector, two
    ways of reading every byte once, as a decode step reads the weights (on a CPU the matrix-vector
    product is the faster; taking the best makes the roofline harder to reach, not easier). Each round
    reads the matrix BANDWIDTH_PASSES times back to back, as decoding reads the weights step after step: a
    single pass on a shared machine catches bursts that no sustained read reaches.
    """
    gib = 4 if device.type == "cuda" else 1  # far beyond every cache (the CPU here reports a 300 MiB L3)
    x = torch.ones(gib * 2**30 // 4096, 1024, dtype=torch.float32, device=device)  # (rows, 1024)
    v = torch.ones(1024, dtype=torch.float32, device=device)
    best = float("inf")
    for op in (torch.sum, lambda x: torch.mv(x, v)):
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(BANDWIDTH_PASSES):
                op(x)
            sync(device)
            best = min(best, (time.perf_counter() - t0) / BANDWIDTH_PASSES)
    return x.numel() * 4 / best


def measure_matmul_flops(device, dtype, n=2048) -> float:
    """What a big square matmul reaches here: the MFU denominator on a CPU, whose peak nobody publishes."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(4):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device, dtype) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)
        if peak is not None:
            return peak, f"{name} dense bf16 peak"
    return measure_matmul_flops(device, dtype), "measured 2048^3 matmul"


# -----------------------------------------------------------------------------
# (1) Decode: tokens/s of both engines, from the time each step's tokens come out


class StepClock:
    """transformers calls put() with every step's tokens (the prompt first): note when each arrives."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def decode_steps_per_s(times) -> float:
    """Steps/s between the WARM_STEPS-th and the last step: no prefill, no compilation, no warm-up."""
    return (len(times) - 1 - WARM_STEPS) / (times[-1] - times[WARM_STEPS])


def engine_run(model, prompts, lengths, batch, compile=False, on_step=None, max_len=None):
    """Greedy decoding through engine.py as sample.py drives it: every prompt queued at once, row i
    finished after lengths[i] tokens. on_step() after each step's tokens are out. Returns the engine,
    and the seconds spent in steps that prefilled (all that sharing a common prompt prefix could save)."""
    max_len = max_len or max(map(len, prompts)) + max(lengths)
    engine = Engine(model, batch_size=batch, max_len=max_len, compile=compile)
    for i, p in enumerate(prompts):
        engine.add(i, p)
    made, prefill_s = [0] * len(prompts), 0.0
    while len(engine):
        t0, prefilled = time.perf_counter(), engine.prefill_tokens
        ids, logits = engine.step()
        for i, token in zip(ids, sample(logits).tolist()):  # one sync a step, as in sample.py
            made[i] += 1
            if made[i] == lengths[i]:
                engine.finish(i)
            else:
                engine.append(i, token)
        if engine.prefill_tokens > prefilled:
            prefill_s += time.perf_counter() - t0
        if on_step is not None:
            on_step()
    engine.close()
    return engine, prefill_s


def run_ours(model, prompts, compile):
    times = []
    engine_run(model, prompts, [WARM_STEPS + TIMED_STEPS + 1] * len(prompts), len(prompts), compile,
               on_step=lambda: times.append(time.perf_counter()))
    return decode_steps_per_s(times)


def run_reference(hf, prompts, device):
    n = WARM_STEPS + TIMED_STEPS + 1
    clock = StepClock()
    hf.generate(torch.tensor(prompts, device=device), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                pad_token_id=0, streamer=clock)
    return decode_steps_per_s(clock.times[1:])  # the first put() is the prompt


def run_matmuls(model, B, device, dtype):
    """
    A step that is only the model's matrix products, weight after weight in the order a step reads
    them (no attention, norms, cache or sampling). On a CPU it is about the most an engine built on
    torch's matmuls can reach: its distance from the roofline is the matmul kernels' and the machine's,
    not an engine's. On a GPU it runs eagerly, one kernel launch a matmul, so a compiled step with CUDA
    graphs can beat it.
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # blocks in order, then the head
    inputs = {m.in_features: torch.randn(B, m.in_features, device=device, dtype=dtype) for m in linears}
    times = []
    for _ in range(WARM_STEPS + TIMED_STEPS + 1):
        for m in linears:
            F.linear(inputs[m.in_features], m.weight, m.bias)
        sync(device)
        times.append(time.perf_counter())
    return decode_steps_per_s(times)


@torch.no_grad()
def bench_decode(args, device, dtype, bandwidth) -> tuple[list[dict], dict, float]:
    """Both engines and the bare matmuls, alternating. The bandwidth is measured again after each round
    and the best reading counts: a shared machine's bandwidth moves, and a roofline taken from one slow
    moment would flatter every engine."""
    cfg = config(args.decode_shape)
    model = our_model(cfg, device, dtype).eval()
    hf = reference_model(cfg, device, dtype).eval()
    hf.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(0)
    engines = ["sample.py"] + ["sample.py --compile"] * args.compile + ["transformers generate", MATMULS]
    rates = {}  # (batch, engine) -> the best steps/s
    for B in [int(b) for b in args.decode_batch.split(",")]:
        prompts = torch.randint(0, 150000, (B, PROMPT_LEN), generator=gen).tolist()
        for _ in range(REPEATS):
            for name in engines:
                if name == MATMULS:
                    rate = run_matmuls(model, B, device, dtype)
                elif name.startswith("transformers"):
                    rate = run_reference(hf, prompts, device)
                else:
                    rate = run_ours(model, prompts, compile=name.endswith("--compile"))
                rates[B, name] = max(rates.get((B, name), 0.0), rate)
                print(f"  decode batch {B:2d} {name:24s} {rate * B:9.1f} tok/s", flush=True)
            bandwidth = max(bandwidth, measure_bandwidth(device))

    step_bytes = weight_bytes_per_token(model)
    roofline = bandwidth / step_bytes  # steps/s if a step cost nothing but reading every weight once
    results = []
    for (B, name), rate in rates.items():
        ref = rates[B, "transformers generate"]
        results.append(dict(batch=B, engine=name, tokens_per_s=rate * B, steps_per_s=rate,
                            roofline_share=rate / roofline, vs_transformers=rate / ref))
    del model, hf
    return results, dict(shape=args.decode_shape, params=num_params(our_model_meta(cfg)), step_bytes=step_bytes,
                         roofline_steps_per_s=roofline), bandwidth


def our_model_meta(cfg):
    with torch.device("meta"):
        return Qwen2(cfg)


# -----------------------------------------------------------------------------
# (1b) An evaluation-like workload: many prompts whose generations differ 8-16x in length, as in a
# budget sweep. engine.py (continuous batching over pages) against the static engine it replaced and
# against transformers' generate in static batches: useful tokens/s, and the KV cache each holds at peak.


def static_run(model, prompts, lengths):
    """
    The engine before engine.py (sample.py at commit 47cf3a2), in brief: one preallocated cache of
    batch x (longest prompt + longest generation), prompts left-padded, rows leaving as they finish
    and none joining. Greedy. Returns the decode steps and the cache slots it held.
    """
    device = next(model.parameters()).device
    B, P, n = len(prompts), max(map(len, prompts)), max(lengths)
    model.setup_cache(B, P + n)
    pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (B,)
    slots = torch.arange(P + n, device=device)
    live = (slots[None] >= pad[:, None]) & (slots < P)  # (B, S) the slots each row may attend to
    mask = (slots[:P, None] >= slots[None, :P]) & live[:, None, :P] | torch.eye(P, dtype=torch.bool, device=device)
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=device)
    logits = model(idx, input_pos=slots[:P], position_ids=(slots[None, :P] - pad[:, None]).clamp(min=0),
                   mask=mask[:, None], last_only=True)[:, -1]
    rows, steps = torch.tensor(lengths, device=device), 0
    for t in range(P, P + n):
        tokens = sample(logits)
        keep = (rows > t - P + 1).nonzero()[:, 0]  # rows with tokens still to make
        if len(keep) == 0:
            break
        if len(keep) < len(rows):  # finished rows leave the batch and its cache
            for layer in model.model.layers:
                cache = layer.self_attn.kv_cache
                cache.k, cache.v = cache.k[keep], cache.v[keep]
            live, pad, rows, tokens = live[keep], pad[keep], rows[keep], tokens[keep]
        live[:, t] = True
        logits = model(tokens[:, None], input_pos=slots[t:t + 1], position_ids=(t - pad)[:, None],
                       mask=live[:, None, None, :t + 1])[:, -1]
        steps += 1
    model.clear_cache()
    return steps + 1, B * (P + n)


def workload(n, gen) -> tuple[list, list]:
    """n prompts of PROMPT_LEN to 2 x PROMPT_LEN random tokens; SHORT_GEN tokens to generate, and for an
    eighth of them (anywhere in the queue) 8-16 times as many."""
    prompts = [torch.randint(0, 150000, (int(torch.randint(PROMPT_LEN, 2 * PROMPT_LEN + 1, (), generator=gen)),),
                             generator=gen).tolist() for _ in range(n)]
    lengths = torch.randint(SHORT_GEN[0], SHORT_GEN[1] + 1, (n,), generator=gen)
    long = torch.randperm(n, generator=gen)[: n // 8]
    lengths[long] *= torch.randint(8, 17, (len(long),), generator=gen)
    return prompts, lengths.tolist()


@torch.no_grad()
def bench_workload(args, device, dtype, bandwidth) -> list[dict]:
    n, batch = (int(x) for x in args.workload.split(","))
    prompts, lengths = workload(n, torch.Generator().manual_seed(0))
    useful = sum(lengths)
    results = []
    for shape in args.workload_shape.split(","):
        model = our_model(config(shape), device, dtype).eval()
        hf = reference_model(config(shape), device, dtype).eval()
        hf.load_state_dict(model.state_dict())
        per_token = kv_bytes_per_token(model)
        if args.compile:  # compile every batch bucket before the clock starts: rows finishing one by one
            engine_run(model, prompts[:batch], list(range(1, batch + 1)), batch, compile=True,
                       max_len=max(map(len, prompts)) + max(lengths))  # the same page tables as the timed run
        rows = {}
        names = ["engine.py"] + ["engine.py --compile"] * args.compile + [STATIC, "transformers generate"]
        # On a shared CPU, REPEATS alternating rounds and the fastest of each counts; every round is kept.
        for name in [n for _ in range(REPEATS if device.type == "cpu" else 1) for n in names]:
            sync(device)
            t0, steps, kv_slots, prefill_s = time.perf_counter(), 0, 0, None
            if name.startswith("engine.py"):
                engine, prefill_s = engine_run(model, prompts, lengths, batch, name.endswith("--compile"))
                steps, kv_slots = engine.steps, engine.peak_pages * engine.page_size
            for i in range(0, n, batch) if not name.startswith("engine.py") else []:  # static batches
                p, g = prompts[i:i + batch], lengths[i:i + batch]
                if name == STATIC:
                    s, slots = static_run(model, p, g)
                else:  # transformers generates the longest row's length for every row of the batch
                    P = max(map(len, p))
                    hf.generate(torch.tensor([[0] * (P - len(x)) + x for x in p], device=device),
                                attention_mask=torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in p],
                                                            device=device),
                                max_new_tokens=max(g), min_new_tokens=max(g), do_sample=False, pad_token_id=0)
                    s, slots = max(g), len(p) * (P + max(g))
                steps, kv_slots = steps + s, max(kv_slots, slots)
            sync(device)
            dt = time.perf_counter() - t0
            roofline = bandwidth / weight_bytes_per_token(model) * useful / steps  # tokens/s, reading weights only
            rounds = rows[name]["rounds_tokens_per_s"] if name in rows else []
            if not rounds or useful / dt > max(rounds):
                rows[name] = dict(shape=shape, engine=name, tokens_per_s=useful / dt, steps=steps, batch=useful / steps,
                                  roofline_share=useful / dt / roofline, kv_peak_gb=kv_slots * per_token / 1e9,
                                  prefill_share=prefill_s and prefill_s / dt)
            rows[name]["rounds_tokens_per_s"] = rounds + [useful / dt]
            print(f"  workload {shape} {name:24s} {useful / dt:9.1f} tok/s, {steps} steps, "
                  f"KV peak {kv_slots * per_token / 1e9:.3f} GB", flush=True)
        for r in rows.values():
            r.update(vs_transformers=r["tokens_per_s"] / rows["transformers generate"]["tokens_per_s"],
                     vs_static=r["tokens_per_s"] / rows[STATIC]["tokens_per_s"],
                     kv_vs_static=r["kv_peak_gb"] / rows[STATIC]["kv_peak_gb"])
        results += rows.values()
        del model, hf
    return results


# -----------------------------------------------------------------------------
# (2) Training step and (3) loss memory: each measurement in a process of its own


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    # VmHWM, this process image's peak RSS. Not getrusage's ru_maxrss: Linux carries that over from the
    # parent through fork and exec, so every child would report the parent's peak.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def current_bytes(device) -> int:
    return torch.cuda.memory_allocated() if device.type == "cuda" else rss_bytes()


def train_child(spec, device, dtype) -> dict:
    """Time TRAIN_STEPS optimizer steps on random tokens (after one warm-up step); report peak memory."""
    cfg = config(spec["shape"])
    ckpt = spec["checkpointing"] == "on"
    if spec["impl"] == "ours":
        model = our_model(cfg, device, dtype)
        model.gradient_checkpointing = ckpt
        if spec["compile"]:  # as train.py --compile does: each decoder block on its own
            for layer in model.model.layers:
                layer.compile()
        loss_fn = lambda ids: model(ids[:, :-1], targets=ids[:, 1:], loss_chunk=spec["loss_chunk"])  # fused
    else:
        model = reference_model(cfg, device, dtype)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
        loss_fn = lambda ids: model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # it shifts the labels itself
        # (one token fewer predicted than ours: 0.03% at T=4096)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), **ADAMW, fused=device.type == "cuda")
    T = spec["seq"]
    ids = torch.randint(0, 150000, (1, T + 1), device=device)
    base = current_bytes(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(TRAIN_STEPS + 1):
        sync(device)
        t0 = time.perf_counter()
        loss_fn(ids).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[1:])
    n_matmul = num_params(model)  # tied: the one embedding matrix is the output head's multiply
    return dict(step_s=step_s, tokens_per_s=T / step_s, flops=training_flops(cfg, n_matmul, T),
                peak_gb=peak_bytes(device) / 1e9, before_step_gb=base / 1e9)


def loss_child(spec, device, dtype) -> dict:
    """Forward and backward of the loss alone: (1, T, C) activations through a (vocab, C) head."""
    T, C = spec["seq"], spec["hidden"]
    head = torch.nn.Linear(C, VOCAB, bias=False, device=device, dtype=dtype)
    x = torch.randn(1, T, C, device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, VOCAB, (1, T), device=device)
    sync(device)
    base = current_bytes(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if spec["impl"] == "fused":
        loss = linear_cross_entropy(x, head.weight, targets, chunk=spec["loss_chunk"])
    else:  # what a plain implementation does: all logits at once, in fp32
        loss = F.cross_entropy(head(x).float().view(T, VOCAB), targets.view(T))
    loss.backward()
    sync(device)
    return dict(seconds=time.perf_counter() - t0, extra_gb=(peak_bytes(device) - base) / 1e9)


def in_child(spec: dict) -> dict:
    """Run one measurement in a fresh process; a crash (say, killed for memory) is reported, not raised."""
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        why = "killed (out of memory?)" if r.returncode in (-9, 137) else (r.stderr.strip().splitlines() or ["?"])[-1]
        return dict(error=f"exit {r.returncode}: {why}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def free_memory_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def bench_train(args, device, dtype, peak) -> list[dict]:
    results = []
    for T in [int(t) for t in args.train_seq.split(",")]:
        row = {}
        # On a shared CPU, the faster of REPEATS alternating runs each; the GPU check runs each once (a lent
        # GPU is not shared, and the check must stay within minutes).
        for _ in range(REPEATS if device.type == "cpu" else 1):
            for impl in ("ours", "transformers"):
                spec = dict(task="train", impl=impl, shape=args.train_shape, seq=T, checkpointing=args.checkpointing,
                            loss_chunk=args.loss_chunk, compile=args.compile)
                r = in_child(dict(spec, device=device.type, threads=torch.get_num_threads()))
                if "error" not in r:
                    r["mfu"] = r["flops"] / r["step_s"] / peak
                print(f"  train T={T:6d} {impl:12s} " + (r.get("error") or
                      f"{r['tokens_per_s']:9.1f} tok/s  peak {r['peak_gb']:6.2f} GB  MFU {r['mfu']:6.1%}"), flush=True)
                if impl not in row or r.get("tokens_per_s", 0) > row[impl].get("tokens_per_s", 0):
                    row[impl] = r
        ours, ref = row["ours"], row["transformers"]
        if "error" not in ours and "error" not in ref:
            ours["speed_vs_transformers"] = ours["tokens_per_s"] / ref["tokens_per_s"]
            ours["memory_vs_transformers"] = ours["peak_gb"] / ref["peak_gb"]
        results.append(dict(seq=T, **row))
    return results


def bench_loss(args, device, dtype) -> list[dict]:
    results = []
    for T in [int(t) for t in args.loss_seq.split(",")]:
        row = {}
        for impl in ("fused", "full"):
            # full logits: fp32 logits, their log-softmax and their gradient are each T x vocab x 4 bytes
            need = 3 * T * VOCAB * 4
            if impl == "full" and need > 0.8 * free_memory_bytes(device):
                row[impl] = dict(error=f"skipped: needs ~{need / 1e9:.0f} GB, "
                                       f"{free_memory_bytes(device) / 1e9:.0f} GB free")
            else:
                spec = dict(task="loss", impl=impl, seq=T, hidden=args.loss_hidden, loss_chunk=args.loss_chunk,
                            device=device.type, threads=torch.get_num_threads())
                row[impl] = in_child(spec)
            r = row[impl]
            print(f"  loss  T={T:6d} {impl:8s} " + (r.get("error") or
                  f"{r['extra_gb']:7.2f} GB above the inputs, {r['seconds']:.1f}s fwd+bwd"), flush=True)
        results.append(dict(seq=T, hidden=args.loss_hidden, **row))
    return results


# -----------------------------------------------------------------------------
# (4) bf16 logits against fp32, ours and transformers' side by side (the GPU check; on a CPU, --skip '')


@torch.no_grad()
def bench_parity(args, device) -> dict:
    cfg = config(args.decode_shape)
    ours32 = our_model(cfg, device, torch.float32).eval()
    ours16 = our_model(cfg, device, torch.bfloat16).eval()
    hf32 = reference_model(cfg, device, torch.float32).eval()
    hf32.load_state_dict(ours32.state_dict())
    ids = torch.randint(0, 150000, (2, PARITY_SEQ), device=device)
    l32 = ours32(ids).float()
    out = {"ours fp32 vs transformers fp32, max abs diff": (l32 - hf32(input_ids=ids).logits.float()).abs().max().item()}
    hf16 = hf32.to(torch.bfloat16)  # in place: the fp32 reference is done
    l16, h16 = ours16(ids).float(), hf16(input_ids=ids).logits.float()
    out["ours bf16 vs transformers bf16, max abs diff"] = (l16 - h16).abs().max().item()
    for name, l in (("ours", l16), ("transformers", h16)):
        out[f"{name} bf16 vs fp32, max abs diff"] = (l - l32).abs().max().item()
        out[f"{name} bf16 vs fp32, KL"] = F.kl_div(l.log_softmax(-1), l32.log_softmax(-1), log_target=True,
                                                   reduction="batchmean").item() / ids.size(1)
        out[f"{name} bf16 vs fp32, top-1 agreement"] = (l.argmax(-1) == l32.argmax(-1)).float().mean().item()
    for k, v in out.items():
        print(f"  parity {k}: {v:.3g}", flush=True)
    return out


# -----------------------------------------------------------------------------
# Serving: serve.py's HTTP layer against the Sampler called directly


def bench_serve(args, device, dtype) -> dict:
    """
    args.serve chat requests at once, each streamed by its own client through serve.py (uvicorn in a
    thread, the clients on an asyncio loop in this process, so their cost counts against the server),
    against the same questions submitted to a Sampler directly, as the server's is made (the whole context
    as max_len, its KV cache made before the clock starts). Greedy and random weights: both decode the same
    tokens, and hardly a row ends before max_tokens. Best of REPEATS, alternating; one Sampler at a time
    (an engine puts its KV cache in the model's layers).
    """
    import asyncio
    import socket
    import threading

    import httpx
    import uvicorn
    from transformers import AutoTokenizer

    import serve
    from sample import Sampler, run_all

    tokenizer = AutoTokenizer.from_pretrained(args.serve_tokenizer)
    model = our_model(config(args.decode_shape), device, dtype).eval()
    questions = [f"What is {i} plus {2 * i + 1}?" for i in range(args.serve)]
    forcing = dict(wait=1, max_thinking_tokens=args.serve_tokens // 2)  # forced tokens in every row
    common = dict(batch_size=args.serve, kv_cache_gb=SERVE_KV_GB, compile=args.compile)

    async def ask(http, url, question):
        body = dict(messages=[{"role": "user", "content": question}], max_tokens=args.serve_tokens, stream=True,
                    stream_options={"include_usage": True}, **forcing)
        async with http.stream("POST", url, json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith('data: {"id"') and '"usage"' in line:
                    return json.loads(line[6:])["usage"]["completion_tokens"]
        raise RuntimeError(f"no usage at the end of the stream; the last line: {line}")

    async def ask_all(url):
        async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=args.serve)) as http:
            return await asyncio.gather(*(ask(http, url, q) for q in questions))

    def served() -> tuple[float, int]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(serve.make_app(model, tokenizer, "bench", max_queue=0, **common),
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]))
        thread.start()
        try:
            while not server.started:
                time.sleep(0.05)
            t0 = time.perf_counter()
            tokens = asyncio.run(ask_all(f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"))
            return time.perf_counter() - t0, sum(tokens)
        finally:
            server.should_exit = True
            thread.join()

    def direct() -> tuple[float, int]:
        """In a thread of its own, as the server's engine loop steps it: on this project's 2-core CPU the very
        same steps took twice as long in the main thread (cause not found)."""
        out = []

        def run():
            with Sampler(model, tokenizer, max_len=model.config.max_position_embeddings, **common) as sampler:
                ids = [sampler.submit(q, max_new_tokens=args.serve_tokens, **forcing) for q in questions]
                sampler.start()
                t0 = time.perf_counter()
                gens = run_all(sampler, ids)
                out.append((time.perf_counter() - t0, sum(len(g.token_ids) for g in gens)))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return out[0]

    runs = {"Sampler": [], "serve.py, streamed": []}
    for _ in range(REPEATS):
        runs["Sampler"].append(direct())
        runs["serve.py, streamed"].append(served())
        assert runs["serve.py, streamed"][-1][1] == runs["Sampler"][-1][1], "not the same tokens"
        print(f"  serve {args.serve} requests: Sampler {runs['Sampler'][-1][0]:.2f} s, "
              f"serve.py {runs['serve.py, streamed'][-1][0]:.2f} s", flush=True)
    out = dict(shape=args.decode_shape, requests=args.serve, max_tokens=args.serve_tokens, rows={})
    for name, (seconds, tokens) in ((name, min(r)) for name, r in runs.items()):
        out["rows"][name] = dict(seconds=seconds, tokens=tokens, requests_per_s=args.serve / seconds,
                                 tokens_per_s=tokens / seconds)
    rows = out["rows"]
    out["served_vs_direct"] = rows["serve.py, streamed"]["tokens_per_s"] / rows["Sampler"]["tokens_per_s"]
    return out


# -----------------------------------------------------------------------------
# (5) The training step with each offload choice, and the memory estimate against the measured peak


def bench_offload(args, device, dtype) -> list[dict]:
    """
    memory.py's step (train.py's: FSDP2, checkpointing, fused loss, AdamW; 1 process, 2 micro-batches) with
    each offload choice, one after another in one fresh process, and memory.py's estimate of each.
    Measured peak: torch.cuda.max_memory_allocated on a GPU; on a CPU RSS, which also holds the
    "offloaded" copies (there they land in the same memory), so only no offload compares there.
    """
    results = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # RSS then follows the live tensors (memory.py)
    for shape in args.offload_shapes.split(","):
        spec = dict(config=config(shape).to_hf(), seq_len=args.offload_seq, dtype=str(dtype).replace("torch.", ""),
                    steps=TRAIN_STEPS, device=device.type)
        try:
            (rows,) = in_processes("compare", [spec], env)
        except RuntimeError as e:
            rows = [dict(offload=o, error=str(e)) for o in OFFLOADS]
        for r in rows:
            r["shape"], r["seq"] = shape, args.offload_seq
            if "error" not in r:
                r.update(peak_gb=r["peak"] / 1e9, estimate_gb=r["estimate"]["gpu"] / 1e9,
                         estimate_vs_measured=r["estimate"]["gpu"] / r["peak"],
                         speed_vs_none=r["tokens_per_s"] / rows[0]["tokens_per_s"])
            print(f"  offload {shape} T={args.offload_seq} {r['offload']:22s} " + (r.get("error") or
                  f"{r['tokens_per_s']:9.1f} tok/s  peak {r['peak_gb']:6.2f} GB  estimate {r['estimate_gb']:6.2f} GB"),
                  flush=True)
        results += rows
    return results


# -----------------------------------------------------------------------------
# Report


def markdown(res) -> str:
    m, lines = res["machine"], []
    lines.append(f"{m.get('gpu') or m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
                 f"transformers {m['transformers']}, {m['date']}; load average before {m['load']}, "
                 f"after {m['load_after']}")
    lines.append(f"\nMemory read bandwidth (best of a sum and a matrix-vector product over a large fp32 matrix, "
                 f"{BANDWIDTH_PASSES} passes back to back, measured before and between the decode runs): "
                 f"{res['bandwidth'] / 1e9:.1f} GB/s; "
                 f"MFU denominator: {res['peak_flops'] / 1e12:.3g} TFLOP/s ({res['peak_flops_source']})")
    if "decode" in res:
        d = res["decode_info"]
        lines += [f"\nDecode, {d['shape']} shape ({d['params'] / 1e6:.0f}M params, {d['step_bytes'] / 1e9:.2f} GB "
                  f"of weights read a step), {res['dtype']}, prompt {PROMPT_LEN}, {TIMED_STEPS} timed steps; "
                  f"roofline {d['roofline_steps_per_s']:.1f} steps/s\n",
                  "| batch | engine | tokens/s | roofline share | vs transformers |", "|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['engine']} | {r['tokens_per_s']:.1f} | {r['roofline_share']:.0%} | "
                  f"{r['vs_transformers']:.2f}x |" for r in res["decode"]]
    if res.get("workload"):
        n, batch = res["args"]["workload"].split(",")
        lines += [f"\nAn evaluation-like workload, {res['dtype']}: {n} prompts of {PROMPT_LEN}-{2 * PROMPT_LEN} "
                  f"tokens, most generating {SHORT_GEN[0]}-{SHORT_GEN[1]} tokens and an eighth 8-16x as many, at most "
                  f"{batch} decoded together (transformers and the static cache: in static batches of that size). "
                  "Tokens/s counts the tokens asked for (the fastest round; every round's in brackets); the roofline "
                  "is weight reads alone at the mean batch of the steps\n",
                  "| shape | engine | tokens/s | vs transformers | vs static | mean batch | roofline share | "
                  "KV peak GB | KV vs static | prefill share |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["workload"]:
            prefill = "" if r["prefill_share"] is None else f"{r['prefill_share']:.1%}"
            every = ", ".join(f"{x:.0f}" for x in r["rounds_tokens_per_s"])
            lines.append(f"| {r['shape']} | {r['engine']} | {r['tokens_per_s']:.1f} ({every}) | {r['vs_transformers']:.2f}x | "
                         f"{r['vs_static']:.2f}x | {r['batch']:.1f} | {r['roofline_share']:.0%} | "
                         f"{r['kv_peak_gb']:.3f} | {r['kv_vs_static']:.2f}x | {prefill} |")
    if "train" in res:
        cfg = config(res["args"]["train_shape"])
        lines += [f"\nTraining step, {res['args']['train_shape']} shape ({num_params(our_model_meta(cfg)) / 1e6:.0f}M "
                  f"params, vocab {VOCAB}), {res['dtype']}, AdamW, batch 1, activation checkpointing "
                  f"{res['args']['checkpointing']}, loss chunk {res['args']['loss_chunk']} tokens\n",
                  "| T | model | tokens/s | peak memory GB | MFU | speed vs transformers | memory vs transformers |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["train"]:
            for impl in ("ours", "transformers"):
                x = r[impl]
                if "error" in x:
                    lines.append(f"| {r['seq']} | {impl} | {x['error']} | | | | |")
                    continue
                ratio = (f"{x['speed_vs_transformers']:.2f}x | {x['memory_vs_transformers']:.2f}x"
                         if "speed_vs_transformers" in x else " | ")
                name = ("model.py + fused loss" + " + compiled blocks" * res["args"]["compile"] if impl == "ours"
                        else "transformers Qwen2ForCausalLM")
                lines.append(f"| {r['seq']} | {name} | {x['tokens_per_s']:.0f} | {x['peak_gb']:.2f} | "
                             f"{x['mfu']:.1%} | {ratio} |")
    if "loss" in res:
        lines += [f"\nLoss forward + backward, vocab {VOCAB}, hidden {res['args']['loss_hidden']}, {res['dtype']}, "
                  f"chunks of {res['args']['loss_chunk']} tokens: memory above the inputs\n",
                  "| T | fused GB | full logits GB |", "|---|---|---|"]
        for r in res["loss"]:
            cell = [r[k].get("error") or f"{r[k]['extra_gb']:.2f}" for k in ("fused", "full")]
            lines.append(f"| {r['seq']} | {cell[0]} | {cell[1]} |")
    if "serve" in res:
        r = res["serve"]
        lines += [f"\nServing, {r['shape']} shape, {res['dtype']}: {r['requests']} concurrent chat requests of "
                  f"{r['max_tokens']} tokens (one Wait, a thinking budget of half)\n",
                  "| path | requests/s | tokens/s |", "|---|---|---|"]
        lines += [f"| {k} | {x['requests_per_s']:.2f} | {x['tokens_per_s']:.1f} |" for k, x in r["rows"].items()]
        lines.append(f"\nserve.py's tokens/s / the Sampler's: {r['served_vs_direct']:.2f}")
    if "offload" in res:
        lines += [f"\nTraining step (memory.py: train.py's FSDP2 step, 1 process, 2 micro-batches, checkpointing, "
                  f"{res['dtype']}) with each --offload choice; estimate: memory.py's, of GPU memory"
                  + (" (on a CPU the measured RSS also holds the offloaded copies)\n" if res["dtype"] == "float32" else "\n"),
                  "| shape | T | offload | tokens/s | vs none | peak GB, measured | estimate GB | estimate / measured |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["offload"]:
            lines.append(f"| {r['shape']} | {r['seq']} | {r['offload']} | " + (f"{r['error']} | | | | |" if "error" in r else
                         f"{r['tokens_per_s']:.0f} | {r['speed_vs_none']:.2f}x | {r['peak_gb']:.2f} | "
                         f"{r['estimate_gb']:.2f} | {r['estimate_vs_measured']:.2f} |"))
    if "parity" in res:
        lines += [f"\nbf16 logits against fp32 (2 x {PARITY_SEQ} random tokens)\n", "| comparison | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3g} |" for k, v in res["parity"].items()]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description="Benchmarks against transformers, side by side in one run")
    p.add_argument("--gpu", action="store_true", help="the GPU check: bf16, compiled decode, MFU, bf16 parity")
    p.add_argument("--decode-shape", choices=list(SHAPES))
    p.add_argument("--decode-batch", help="comma-separated batch sizes (CPU default 1; GPU 1,16)")
    p.add_argument("--workload", help="prompts,max batch of the evaluation-like decode workload (CPU default "
                   "64,16; GPU 256,64; 0 skips it)")
    p.add_argument("--workload-shape", help=f"the workload's model shapes, comma-separated, of {', '.join(SHAPES)} "
                   "(CPU default cpu-small; GPU 0.5B,1.5B)")
    p.add_argument("--compile", action="store_true", help="compile sample.py's decode step and model.py's blocks in "
                   "training, as sample.py and train.py --compile do (on with --gpu)")
    p.add_argument("--train-shape", choices=list(SHAPES))
    p.add_argument("--train-seq", help="comma-separated sequence lengths (CPU default 1024,4096; GPU 16384)")
    p.add_argument("--checkpointing", choices=["on", "off"], help="activation checkpointing, both models "
                   "(CPU default off, GPU on)")
    p.add_argument("--loss-chunk", type=int, default=LOSS_CHUNK, help="tokens per chunk of our loss")
    p.add_argument("--loss-seq", help="comma-separated sequence lengths for the loss memory")
    p.add_argument("--loss-hidden", type=int, default=LOSS_HIDDEN)
    p.add_argument("--skip", help="comma-separated parts to leave out: decode,workload,train,loss,parity,offload "
                   "(CPU default parity; --skip '' runs all six)")
    p.add_argument("--offload-shapes", help="comma-separated shapes for the offload rows (CPU cpu-small; GPU 0.5B,1.5B)")
    p.add_argument("--offload-seq", type=int, help="tokens per sequence of the offload rows (CPU 1024; GPU 16384)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--serve", type=int, default=0, help="also N concurrent streaming requests through serve.py "
                   "against sample.py's Sampler called directly (the decode shape; default 0: off)")
    p.add_argument("--serve-tokens", type=int, default=SERVE_TOKENS, help="max_tokens of each --serve request")
    p.add_argument("--serve-tokenizer", default=SERVE_TOKENIZER, help="a chat tokenizer (hub id or directory)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one training/loss measurement, in its own process
    args = p.parse_args()

    if args.child:
        spec = json.loads(args.child)
        torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        fn = train_child if spec["task"] == "train" else loss_child
        print(json.dumps(fn(spec, device, dtype)))
        return

    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu needs a CUDA device; run without it for the CPU benchmarks", file=sys.stderr)
        sys.exit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    dtype = torch.bfloat16 if args.gpu else torch.float32
    for k, v in (GPU if args.gpu else CPU).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.compile = args.compile or args.gpu
    if set(args.workload_shape.split(",")) - set(SHAPES):
        print(f"error: --workload-shape {args.workload_shape}: the shapes are {','.join(SHAPES)}", file=sys.stderr)
        sys.exit(2)
    skip = set(args.skip.split(",")) - {""}
    if skip - PARTS:
        print(f"error: --skip {args.skip}: the parts are {','.join(sorted(PARTS))}", file=sys.stderr)
        sys.exit(2)

    res = dict(args=vars(args), dtype=str(dtype).replace("torch.", ""), machine=machine(device))
    print(f"{res['machine'].get('gpu') or res['machine']['cpu']}, load average {res['machine']['load']}", flush=True)
    res["bandwidth"] = measure_bandwidth(device)
    res["peak_flops"], res["peak_flops_source"] = peak_flops(device, dtype)
    print(f"  bandwidth {res['bandwidth'] / 1e9:.1f} GB/s, peak {res['peak_flops'] / 1e12:.3g} TFLOP/s "
          f"({res['peak_flops_source']})", flush=True)
    if "decode" not in skip:
        res["decode"], res["decode_info"], res["bandwidth"] = bench_decode(args, device, dtype, res["bandwidth"])
    if "workload" not in skip and args.workload != "0":
        res["workload"] = bench_workload(args, device, dtype, res["bandwidth"])
    if "train" not in skip:
        res["train"] = bench_train(args, device, dtype, res["peak_flops"])
    if "loss" not in skip:
        res["loss"] = bench_loss(args, device, dtype)
    if "parity" not in skip:
        res["parity"] = bench_parity(args, device)
    if args.serve:
        res["serve"] = bench_serve(args, device, dtype)
    if "offload" not in skip:
        res["offload"] = bench_offload(args, device, dtype)
    res["machine"]["load_after"] = [round(x, 1) for x in os.getloadavg()]
    print("\n" + markdown(res))
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)), prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
