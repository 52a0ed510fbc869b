"""
What a run of train.py needs in GPU memory, found before the run and without a GPU, and the offload
choices that fit a bigger run on the same GPUs without changing a number it computes.

Read it in four parts. (1) Offload: FSDP2's CPUOffloadPolicy keeps the sharded fp32 parameters, their
gradients and AdamW's moments in pinned host memory and runs the optimizer step on the CPU; activation
offload moves what the backward pass keeps from the forward pass outside the checkpointed blocks (each
block's input) to pinned host memory, and copies it back when the backward pass reaches it. Both
change where tensors live, never what is computed. (2) The estimate: train.py's model, sharding,
mixed precision, checkpointing, fused loss and AdamW run one optimizer step on fake tensors (shapes,
no data) on a fake GPU, under a fake process group of N ranks, while torch's FSDPMemTracker adds up
every tensor alive; the peak, and what was alive at that moment, is the estimate. A deep model is
traced at 4, 5 and 6 layers and extrapolated, to the byte (extrapolate()). (3) The same step
with real tensors, which measures what the estimate predicts. (4) At train.py's start-up: the offload
that fits, or a refusal that says what would. The README's table of what fits where is fits.py.

    python train.py --estimate-memory --world-size 8    # what s1-32B needs per GPU on one 8-GPU node
    python fits.py --out docs/fits.json                 # every Qwen2.5 size x 1/8/16 GPUs (~40 min on 2 cores)

What it leaves out: the estimate counts the bytes of live tensors, as torch.cuda.max_memory_allocated
does. The CUDA context, NCCL's own buffers and the caching allocator's fragmentation come on top (a
few GB), which is why a run "fits" only with 5% of the GPU to spare. It estimates the eager step
(--compile is estimated as eager), and the host side counts the offloaded tensors only (not the
processes' own memory).
"""

import contextlib
import dataclasses
import gc
import json
import os
import sys
import time
import unittest.mock

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from memtrace import FAKE_GPU, PhasePeaks, flash_attention, use_fake_gpu
from model import CheckpointError, Qwen2, Qwen2Config, num_params, resolve_checkpoint

OFFLOADS = ("none", "activations", "optimizer", "optimizer+activations")  # auto tries them in this order
HEADROOM = 0.05  # a run fits when its estimated peak leaves this share of the GPU free
GB = 1e9


class DoesNotFit(Exception):
    """No offload choice fits the run on these GPUs; the message says what would."""


# -----------------------------------------------------------------------------
# (1) Offload


def shard(model: Qwen2, mesh, param_dtype, offload: str, compile: bool = False) -> Qwen2:
    """
    FSDP2 as s1 trained: one unit per decoder block (one all-gather per block, freed after use), then the
    root (embedding, tied head, final norm together); compute in param_dtype, reduce gradients in fp32,
    fp32 master weights. With optimizer offload the sharded fp32 parameters and gradients live in host
    memory, so AdamW steps on the CPU. Gives the meta-device model its (empty) storage.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    on_host = "optimizer" in offload
    # Pinned host memory is what lets the copies to and from a GPU run asynchronously; there is none
    # to pin without a GPU (the estimate's fake one included), and the bytes are the same.
    policy = CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda") if on_host else OffloadPolicy()
    for layer in model.model.layers:
        if compile:
            layer.compile()  # in place: state_dict keys stay the checkpoint's (no `_orig_mod.`)
        fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=policy)
    return model.to_empty(device="cpu" if on_host else mesh.device_type)


def offloaded_activations(offload: str, device):
    """
    The context of the forward pass. With activation offload, every tensor the backward pass keeps that
    is saved outside a checkpointed block goes to host memory at once and comes back when the backward
    pass needs it: with checkpointing, those are each block's input (T x C, bf16: 21.5 GB for 32B at
    block 32768), which the checkpoint saves to recompute the block from. Inside a block the checkpoint's
    own hooks win, so nothing there is copied. The rotary tables ride along with each block's input
    (T x head_dim, two of them per block; 5% on top for 32B).
    """
    if "activations" not in offload:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.device(device).type == "cuda")


def train_step(model, optim, x, y, micro_batches: int, offload: str, loss_chunk: int, defer_grad_sync=False,
               between=None):
    """
    One optimizer step of train.py's loop (without its logging) on `micro_batches` copies of the micro-batch
    x, y (B, T): each sequence's loss is the mean over its targets, the gradient that of the mean over all
    sequences, clipped to norm 1, then AdamW. `between()` runs before each micro-batch.
    """
    trained = y != -100  # (B, T)
    weights = trained / trained.sum(1, keepdim=True)  # (B, T)
    for a in range(micro_batches):
        if between:
            between()
        if defer_grad_sync:
            model.set_requires_gradient_sync(a == micro_batches - 1)
        with offloaded_activations(offload, x.device):
            seq_losses = model(x, targets=y, loss_weights=weights, loss_chunk=loss_chunk)
        (seq_losses / (micro_batches * len(x))).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # train.py's clip_grad_norm, the same tensors
    optim.step()
    optim.zero_grad(set_to_none=True)
    return seq_losses.detach()


def fill_optimizer_state(model, optim, keep_grads=False):
    """AdamW makes its moments at its first step: take one with zero gradients (clipped, as every step),
    so that the next step meets every tensor that a long run has. keep_grads: leave the zero gradients
    in place, as a micro-batch after the first finds the gradients of those before it."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()
    optim.zero_grad(set_to_none=not keep_grads)


def build(model, mesh, param_dtype, checkpointing: bool, offload: str) -> tuple[Qwen2, torch.optim.Optimizer]:
    """train.py's model (on the meta device) sharded and given empty (or fake) storage, and its optimizer."""
    model.gradient_checkpointing = checkpointing
    shard(model, mesh, param_dtype, offload)
    # train.py splits the parameters into two groups (no weight decay on biases and norms): the same tensors.
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    return model, optim


# -----------------------------------------------------------------------------
# (2) The estimate: a fake GPU, a fake process group, fake tensors; a deep model from shallow ones


# FSDPMemTracker's categories, summed into the rows of our table (GB per GPU at the GPU's peak)
ROWS = {"parameters (sharded, fp32)": ("Sharded Param", "Buffer"),
        "parameters gathered for compute": ("Unsharded Param",),
        "gradients": ("Sharded Grad", "Unsharded Grad"),
        "optimizer state (AdamW)": ("OptState",),
        "activations": ("Activation", "Inputs"),
        "temporaries": ("Temp",),
        "collective buffers": ("All Gather", "Reduce Scatter")}


SHALLOW = (4, 5, 6)  # the depths traced for a deeper model, whose estimate is extrapolated from them


def estimate(config: Qwen2Config, world: int, seq_len: int, micro_batch=1, accum=1, param_dtype=torch.bfloat16,
             checkpointing=True, offload="none", loss_chunk=1024, defer_grad_sync=False, exact=False) -> dict:
    """
    The peak memory of one GPU in train.py's run of `config` on `world` GPUs: {"gpu": peak bytes, "host":
    peak bytes of host memory (the offloaded tensors), "rows": {row: bytes at the GPU's peak}, "phase": the
    phase of the step where the GPU peaks, "layers_traced", "seconds", "cpu_seconds"}.
    Nothing is read but the config; every tensor is a shape on a fake device. A model deeper than
    SHALLOW is traced at those depths and extrapolated to its own (extrapolate(): the same bytes as
    tracing it whole, in a fraction of the time), unless `exact` or unless the shallow traces disagree.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    run = dict(world=world, seq_len=seq_len, micro_batch=micro_batch, accum=accum, param_dtype=param_dtype,
               checkpointing=checkpointing, offload=offload, loss_chunk=loss_chunk, defer_grad_sync=defer_grad_sync)
    depth, phases = config.num_hidden_layers, None
    if not exact and depth > SHALLOW[-1]:
        layers_traced = list(SHALLOW)
        phases = extrapolate({n: trace(dataclasses.replace(config, num_hidden_layers=n), **run) for n in SHALLOW},
                             depth)
    if phases is None:  # a shallow model, exact, or shallow traces that do not line up: the whole model
        layers_traced, phases = [depth], trace(config, **run)
    # The GPU's peak is the highest of the phases' (the first, on a tie, as torch's tracker keeps the first
    # moment); the host's may come in another phase.
    gpu_phase, gpu = max(((name, p.get(FAKE_GPU, {})) for name, p in phases), key=lambda np: np[1].get("Total", 0))
    host = max(p.get("cpu", {}).get("Total", 0) for _, p in phases)
    rows = {row: sum(gpu.get(kind, 0) for kind in kinds) for row, kinds in ROWS.items()}
    return dict(gpu=gpu.get("Total", 0), host=host, rows=rows, phase=gpu_phase, layers_traced=layers_traced,
                seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0)


def trace(config: Qwen2Config, world: int, seq_len: int, micro_batch, accum, param_dtype, checkpointing, offload,
          loss_chunk, defer_grad_sync) -> list:
    """train.py's step traced on fake tensors on a fake GPU, one of `world`: PhasePeaks.phases."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    use_fake_gpu()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        mesh = init_device_mesh(FAKE_GPU, (world,))
        with torch.device("meta"):
            model = Qwen2(config)  # outside the fake mode: initialising fake weights is slow and pointless
        with FakeTensorMode(allow_non_fake_inputs=True), \
                unittest.mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", flash_attention):
            model, optim = build(model, mesh, param_dtype, checkpointing, offload)
            x = torch.randint(0, config.vocab_size, (micro_batch, seq_len), device=FAKE_GPU)
            tracker = PhasePeaks(model, optim)
            tracker.track_inputs((x,))
            # From the second micro-batch of a step on, each finds the same tensors alive (the gradients of
            # the ones before, accumulated in place): one micro-batch after a first step that leaves zero
            # gradients stands for any number. With deferred sync those are the unsharded gradients of a
            # real first micro-batch. The first step's peak is not kept: DTensor works out how to shard an
            # op's output the first time it meets the op, on fake outputs that the tracker counts.
            defer = defer_grad_sync and accum > 1
            with tracker:
                fill_optimizer_state(model, optim, keep_grads=accum > 1 and not defer)
            tracker.phases = []
            with tracker:
                train_step(model, optim, x, x, 2 if defer else 1, offload, loss_chunk, defer,
                           between=tracker.reset_mod_stats)  # (torch's tracker refuses a module's second forward)
            return tracker.phases
    finally:
        dist.destroy_process_group()


def extrapolate(traces: dict, depth: int) -> list | None:
    """
    The phases of a `depth`-layer model from the traces {layers: phases} of three consecutive shallower
    depths, or None when those do not line up. Every decoder block is the same module with the same
    shapes, so at a given moment of the step the bytes alive of each kind are some block-sized tensors
    (each block's share of the fp32 weights, its gradients and AdamW moments, its checkpointed input)
    counted once per layer, plus tensors that do not depend on the depth (the embedding and head, one
    block's gathered weights and recomputed activations, the loss's chunk): affine in the depth, to the
    byte. Within a phase the memory goes up or down by the same bytes from one block to the next at any
    depth, so its peak falls at the same moment (the same end of the stack) at every depth. Which phase
    peaks can change with depth (the optimizer step's temporaries grow per layer at another rate than
    the backward pass's tensors), so each phase gets its own line and the highest is taken at `depth`.
    The third depth checks every line to the byte; a phase or kind that is not on one line (or a
    different sequence of phases) means the shallow models are not like the deep one: None.
    """
    (a, ta), (b, tb), (c, tc) = sorted(traces.items())
    assert b == a + 1 and c == b + 1, "three consecutive depths"
    if [name for name, _ in ta] != [name for name, _ in tb] or [name for name, _ in tb] != [name for name, _ in tc]:
        return None
    phases = []
    for (name, pa), (_, pb), (_, pc) in zip(ta, tb, tc):
        devices = {}
        for device in set(pa) | set(pb) | set(pc):
            sa, sb, sc = pa.get(device, {}), pb.get(device, {}), pc.get(device, {})
            kinds = {}
            for kind in set(sa) | set(sb) | set(sc):
                va, vb, vc = sa.get(kind, 0), sb.get(kind, 0), sc.get(kind, 0)
                if vc - vb != vb - va:
                    return None
                kinds[kind] = va + (depth - a) * (vb - va)
            devices[device] = kinds
        phases.append((name, devices))
    return phases


def fits(peak_bytes: float, gpu_gb: float) -> bool:
    return peak_bytes <= (1 - HEADROOM) * gpu_gb * GB


def pick(estimates: dict, gpu_gb: float, host_free_gb: float | None = None, gpus_per_node=1) -> str | None:
    """auto's choice: the first of OFFLOADS (cheapest first) that fits, and whose pinned host memory the
    node has free (None: not checked)."""
    for choice in OFFLOADS:
        e = estimates.get(choice)
        if e and fits(e["gpu"], gpu_gb) and (host_free_gb is None or e["host"] * gpus_per_node <= host_free_gb * GB):
            return choice
    return None


def estimates_until_fit(spec: dict, choice: str, gpu_gb: float) -> dict:
    """{offload: estimate} for `choice`; for auto, for each choice in order until one fits."""
    out = {}
    for offload in OFFLOADS if choice == "auto" else (choice,):
        out[offload] = estimate_spec(dict(spec, offload=offload))
        if pick(out, gpu_gb):
            break
    return out


def config_dir(path_or_repo_id: str) -> str:
    """A directory with the model's config.json: a local one as it is; from the hub, config.json alone (kB)."""
    if os.path.isdir(path_or_repo_id) or path_or_repo_id.count("/") != 1 or path_or_repo_id.startswith((".", "/", "~")):
        return resolve_checkpoint(path_or_repo_id)  # a directory, or its one-line error
    try:
        from huggingface_hub import hf_hub_download
        return os.path.dirname(hf_hub_download(path_or_repo_id, "config.json"))
    except Exception as e:
        raise CheckpointError(f"{path_or_repo_id}: could not read its config.json ({type(e).__name__}); give a local "
                         "checkpoint or config directory") from None


def estimate_spec(spec: dict) -> dict:
    """estimate() from a JSON-able spec (config as a Hugging Face dict), as the child processes take it."""
    s = dict(spec)
    config = Qwen2Config.from_hf(s.pop("config"))
    s["param_dtype"] = getattr(torch, s.pop("dtype", "bfloat16"))
    return estimate(config, **s)


def in_processes(task: str, specs: list[dict], env=None) -> list[dict]:
    """`python memory.py TASK SPEC` for each spec at once, each in a fresh process (a process holds one
    process group, and a measurement's memory must be its own): their results."""
    import subprocess
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), task, json.dumps(s)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in specs]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"memory {task} failed: {(err.strip().splitlines() or ['?'])[-1]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def gpu_memory_gb(given: float | None) -> float:
    """The GPU memory to fit in: as given, else this machine's GPU's, else an 80 GB card's."""
    if given:
        return given
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GB if \
        torch.cuda.is_available() else 80.0


def print_estimate(spec: dict, name: str, choice: str, gpu_gb: float):
    """train.py --estimate-memory: what is estimated, the table, the verdict."""
    with torch.device("meta"):
        n = num_params(Qwen2(Qwen2Config.from_hf(spec["config"])))
    size = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"
    print(f"estimating {name} ({size} params) on {spec['world']} GPUs of {gpu_gb:g} GB: {spec['seq_len']} "
          f"tokens a sequence, micro-batch {spec['micro_batch']} x {spec['accum']} accumulation, {spec['dtype']}, "
          f"checkpointing {'on' if spec['checkpointing'] else 'off'}, --offload {choice}", flush=True)
    print("\n".join(report(estimates_until_fit(spec, choice, gpu_gb), gpu_gb, choice, spec["world"])))


def report(estimates: dict, gpu_gb: float, choice: str, world: int) -> list[str]:
    """The per-GPU table, one column per offload choice estimated, what auto picks, and the verdict last."""
    picked = pick(estimates, gpu_gb) if choice == "auto" else choice
    shown = picked or list(estimates)[-1]
    width = max(len(r) for r in ROWS) + 2
    lines = [f"{'GB per GPU, at its peak':<{width}}" + "".join(f"{n:>24}" for n in estimates)]
    for row in ROWS:
        lines.append(f"{row:<{width}}" + "".join(f"{e['rows'][row] / GB:>24.1f}" for e in estimates.values()))
    lines.append(f"{'peak per GPU':<{width}}" + "".join(f"{e['gpu'] / GB:>24.1f}" for e in estimates.values()))
    per_node = min(world, 8)
    lines.append(f"{f'host memory (pinned) x {per_node} GPUs':<{width}}" +
                 "".join(f"{e['host'] * per_node / GB:>24.1f}" for e in estimates.values()))
    lines.append(f"(estimates from fake tensors; fits = at most {1 - HEADROOM:.0%} of the GPU, for the CUDA context, "
                 "NCCL and the allocator)")
    if choice == "auto":
        lines.append(f"offload auto: {picked}, the cheapest choice that fits" if picked else
                     "offload auto: nothing fits; " + why_not(estimates[shown], gpu_gb, "the run"))
    peak = estimates[shown]["gpu"]
    lines.append(f"peak per GPU: {peak / GB:.1f} GB of {gpu_gb:g} GB ({'fits' if fits(peak, gpu_gb) else 'does not fit'})")
    return lines


def why_not(e: dict, gpu_gb: float, what: str) -> str:
    """One line for a run that does not fit: its peak, the GPU, and what would fit."""
    states = sum(e["rows"][r] for r in ("parameters (sharded, fp32)", "gradients", "optimizer state (AdamW)")) / GB
    acts = (e["rows"]["activations"] + e["rows"]["temporaries"]) / GB
    return (f"{what} needs an estimated {e['gpu'] / GB:.1f} GB per GPU, and a {gpu_gb:g} GB GPU fits "
            f"{(1 - HEADROOM) * gpu_gb:.1f} GB (5% spare); what would fit: more GPUs (the {states:.1f} GB of "
            f"sharded weights, gradients and AdamW state shrink as 1/GPUs), a smaller --block-size (the {acts:.1f} "
            "GB of activations and temporaries shrink with it) or a smaller model; check one with "
            "python train.py --estimate-memory --world-size N --block-size T")


# -----------------------------------------------------------------------------
# (3) The same step with real tensors: what the estimate predicts, measured


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure(config: Qwen2Config, seq_len: int, offload="none", param_dtype=torch.float32, checkpointing=True,
            loss_chunk=1024, steps=1, device="cpu", warm_up=True) -> dict:
    """
    The estimate's run, one process, real tensors on `device` (random weights): the peak memory of the
    measured step above the memory before the model existed (torch.cuda.max_memory_allocated on a GPU; on
    a CPU peak RSS, exact when malloc maps every large block on its own: MALLOC_MMAP_THRESHOLD_=65536),
    and the time per step (the median of `steps` after a first one).
    """
    device = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    if warm_up:  # the first run maps in the kernels' code, thread pools and allocator pools: not the step's memory
        measure(config, seq_len, offload, param_dtype, checkpointing, loss_chunk, 0, device, warm_up=False)
    gc.collect()  # FSDP's modules hold cycles: free an earlier run's tensors now, not during this one
    mesh = init_device_mesh(device.type, (1,))
    x = torch.randint(0, config.vocab_size, (1, seq_len), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # start the peak RSS afresh
        base = peak_rss()
    with torch.device("meta"):
        model = Qwen2(config)
    model, optim = build(model, mesh, param_dtype, checkpointing, offload)
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local()
            local.normal_(0, config.initializer_range) if p.dim() > 1 else local.fill_("norm" in name)
    fill_optimizer_state(model, optim)
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = train_step(model, optim, x, x, 2, offload, loss_chunk).item()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
    step_s = sorted(times[1:] or times)[len(times[1:]) // 2]
    return dict(peak=peak - base, step_s=step_s, tokens_per_s=2 * seq_len / step_s, loss=loss, step_times=times[1:])


def compare(config: Qwen2Config, seq_len: int, offloads=OFFLOADS, param_dtype=torch.float32, steps=1,
            device="cpu") -> list[dict]:
    """Each offload choice estimated for one GPU, then run for real here, one after another (bench.py and
    the tests run this in a fresh process): [{offload, estimate: estimate(), peak, tokens_per_s, ...}]."""
    estimates = [estimate(config, 1, seq_len, accum=2, param_dtype=param_dtype, offload=o) for o in offloads]
    return [dict(offload=o, estimate=e, **measure(config, seq_len, o, param_dtype, steps=steps, device=device,
                                                  warm_up=i == 0)) for i, (o, e) in enumerate(zip(offloads, estimates))]


# -----------------------------------------------------------------------------
# (4) At train.py's start-up: which offload, decided before any weight is read


def choose_offload(choice: str, spec: dict, device, gpu_gb: float, say) -> str:
    """
    The offload this run uses. auto on a GPU: rank 0 estimates the choices, all at once in processes of
    their own (a minute or two for 32B), and every rank decides from those numbers and from the node with
    the least host memory free (decide()). auto on a CPU: none (there is no GPU memory to save). Raises
    DoesNotFit, before any weight is read, when nothing fits.
    """
    if device.type != "cuda":
        if choice == "auto":
            say("offload: none (auto: on a CPU there is no GPU memory to save)")
            return "none"
        return choice
    found = [None]
    if dist.get_rank() == 0:
        t0 = time.perf_counter()
        order = OFFLOADS if choice == "auto" else (choice,)
        try:
            found[0] = dict(zip(order, in_processes("estimate", [dict(spec, offload=o) for o in order])))
        except RuntimeError as e:
            found[0] = str(e)
        say(f"memory estimate: {time.perf_counter() - t0:.0f}s")
    dist.broadcast_object_list(found, src=0)
    if isinstance(found[0], str):
        raise DoesNotFit(found[0])
    free = torch.tensor([available_host_memory() / GB], device=device)
    dist.all_reduce(free, op=dist.ReduceOp.MIN)
    picked, line = decide(choice, found[0], gpu_gb, free.item(), int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                          f"this run (block {spec['seq_len']}, {spec['world']} GPUs)")
    say(line)
    return picked


def decide(choice: str, estimates: dict, gpu_gb: float, host_free_gb: float, per_node: int, what: str) -> tuple:
    """
    (offload, the line that says why) from the estimates of `choice` (of every choice, for auto): auto
    takes the cheapest that leaves 5% of the GPU free with its pinned host memory free on the node; an
    explicit choice runs if it fits the GPU at all (with a warning when the 5% is not left). Raises
    DoesNotFit with one line that says what would fit.
    """
    peaks = ", ".join(f"{o} {e['gpu'] / GB:.1f} GB" for o, e in estimates.items())
    picked = pick(estimates, gpu_gb, host_free_gb, per_node)
    if picked is not None:
        why = (f"auto: the cheapest that leaves 5% of the {gpu_gb:g} GB GPU free" if choice == "auto" else
               f"leaves 5% of the {gpu_gb:g} GB GPU free")
        host = estimates[picked]["host"] * per_node / GB
        return picked, (f"offload: {picked} ({why}; estimated peak per GPU: {peaks}; pinned host memory "
                        f"{host:.0f} GB of the node's {host_free_gb:.0f} GB free)")
    short = [o for o, e in estimates.items() if fits(e["gpu"], gpu_gb)]
    if short:  # it fits the GPU, but the node lacks the pinned memory
        need = estimates[short[0]]["host"] * per_node / GB
        raise DoesNotFit(f"--offload {short[0]} fits {what} on the GPUs but needs {need:.0f} GB of pinned host "
                         f"memory on this node of {per_node} GPUs, and {host_free_gb:.0f} GB is free; free host "
                         "memory or use more nodes")
    worst = estimates[OFFLOADS[-1] if choice == "auto" else choice]
    if choice == "auto" or worst["gpu"] > gpu_gb * GB:
        with_ = " even with --offload optimizer+activations" if choice == "auto" else f" with --offload {choice}"
        raise DoesNotFit(why_not(worst, gpu_gb, what + with_))
    return choice, (f"warning: --offload {choice}: an estimated {worst['gpu'] / GB:.1f} GB per GPU leaves less "
                    f"than 5% of the {gpu_gb:g} GB GPU free; --offload auto picks one with room")


def available_host_memory() -> int:
    """Bytes of host memory the kernel can give out (Linux's MemAvailable)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def main(argv=None):
    """The child processes' entry: `python memory.py estimate|compare SPEC` prints the result as JSON."""
    import argparse
    p = argparse.ArgumentParser(description="one memory estimate (or comparison) for train.py, bench.py and the "
                                "tests; the table of what fits where is fits.py")
    p.add_argument("task", choices=["estimate", "compare"])
    p.add_argument("spec", help="JSON: the arguments of estimate() or compare(), the config as a Hugging Face dict")
    args = p.parse_args(argv)
    if args.task == "estimate":
        print(json.dumps(estimate_spec(json.loads(args.spec))))
    else:
        spec = json.loads(args.spec)
        config = Qwen2Config.from_hf(spec.pop("config"))
        spec["param_dtype"] = getattr(torch, spec.pop("dtype", "float32"))
        print(json.dumps(compare(config, **spec)))


if __name__ == "__main__":
    main()
