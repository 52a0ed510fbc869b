"""
Supervised fine-tuning on s1K with plain PyTorch FSDP2, the way s1 trained s1-32B.

Read it top to bottom: s1's recipe as defaults, the process group, the model built on the meta device,
sharded with FSDP2 and then filled shard by shard from the checkpoint, the learning-rate schedule,
checkpoints (torch.distributed.checkpoint) and the Hugging Face export, then the training loop.

    torchrun --nproc_per_node 8 train.py      # s1-32B on one 8-GPU node (s1's defaults, no flags)
    bash torchrun.sh                          # 2 nodes x 8 GPUs, as s1 did; SLURM too
    python train.py --tiny                    # the tiny CPU run (its data and tokenizer come from tiny.py)
    python train.py --estimate-memory --world-size 8    # what fits, per GPU, without a GPU (memory.py)

Loss as s1: each sequence's loss is the mean over its trained tokens; a step averages the 16 sequences
of the global batch, whatever their lengths (`--loss-average token` weighs every token the same instead).
Sequences are not packed; `--group-by-length` batches sequences of similar length to pad less.

Memory: before any weight is read, `--offload auto` estimates the run's peak per GPU (memory.py) and
picks the cheapest of no offload, checkpointed activations in host memory, or the optimizer (fp32
weights, gradients, AdamW) in host memory, that fits; it refuses a run that cannot fit. s1-32B at block
32768 on 8 x 80 GB runs with the optimizer in host memory. What it leaves out: tensor, sequence and
pipeline parallelism, LoRA.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, distribute_tensor

from data import IGNORE, DataError, collate, describe_truncation, epoch_order, global_batch_ids, load_sft_data, \
    rank_micro_batches, steps_per_epoch
from memory import OFFLOADS, DoesNotFit, choose_offload, config_dir, gpu_memory_gb, offloaded_activations, \
    print_estimate, shard
from model import CheckpointError, Qwen2, Qwen2Config, check_checkpoint, load_config, num_params, \
    resolve_checkpoint, safetensors_files, save_hf_checkpoint

# -----------------------------------------------------------------------------
# s1's recipe, spelled out once (../shared/S1_NOTES.md); every value has a flag below

MODEL = "Qwen/Qwen2.5-32B-Instruct"
DATA = "simplescaling/s1K-1.1"
OUT_DIR = "out/s1"
EPOCHS = 5
LR = 1e-5
WARMUP_RATIO = 0.05  # linear warmup over 5% of the steps, then cosine to 0
DECAY_RATIO = 1.0  # the share of the steps after warmup over which the cosine falls: s1's, all of them
BETA1, BETA2 = 0.9, 0.95
WEIGHT_DECAY = 1e-4
GRAD_CLIP = 1.0
GLOBAL_BATCH = 16  # sequences per optimizer step: one per GPU on s1's 16 GPUs
MICRO_BATCH = 1  # sequences per GPU per forward pass; accumulation makes up the rest
BLOCK_SIZE = 32768  # s1.1 used 20000 to avoid OOM
DTYPE = "auto"  # s1: bf16 on GPU (bf16 params, fp32 reductions, fp32 master weights); fp32 on CPU
SAVE_EVERY = 50
SEED = 42
LOSS_AVERAGE = "sequence"  # s1's: each sequence's loss is the mean over its tokens, the batch the mean of those

# The tiny CPU run (`--tiny`; its data from tiny.py): a small Qwen2-shaped model from scratch on synthetic sums.
# 16 sequences a step: more steps for the same tokens, and steps are what the sudden step of learning to add
# waits for (seed 2 took it after ~5,000 sequences at 16 a step, ~9,000 at 32). Batches grouped by length: a
# random batch nearly always holds a check and pads every sequence to it (32% of its tokens padding), so the
# grouped steps are ~25% faster, which buys a 4th epoch in the time 3 took. The lr held at its peak until
# the last 30% of the steps (warmup-stable-decay): a run that learns the column sums late gets them right in
# the decay, where the noise of the high lr no longer covers them (BENCHMARKS.md has the runs). RoPE base
# 1e4 rather than Qwen2.5's 1e6 (made for 32k tokens): more of its rotations turn within a 128-token sequence.
TINY = dict(data="data/tiny/train.jsonl", tokenizer="data/tiny/tokenizer", out_dir="out/tiny",
            init_from_scratch=True, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, mlp=384, rope_theta=1e4,
            block_size=512, dtype="float32", epochs=4, lr=2e-3, warmup_ratio=0.05, decay_ratio=0.3, weight_decay=0.1,
            global_batch=16, micro_batch=16, group_by_length=True, save_every=200, activation_checkpointing="off")

# Dense bf16 peak of one accelerator, matched against torch.cuda.get_device_name(), longest name first.
PEAK_BF16_FLOPS = {"GH200": 989e12, "H200": 989e12, "H100": 989e12, "H800": 989e12, "B200": 2250e12,
                   "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12, "RTX 4090": 165e12,
                   "A10G": 70e12, "A10": 125e12, "L4": 121e12, "MI300X": 1307e12}


def get_args(argv=None):
    p = argparse.ArgumentParser(description="s1 supervised fine-tuning with FSDP2 (run under torchrun or alone)")
    p.add_argument("--model", default=MODEL, help="HF checkpoint directory or hub id to fine-tune")
    p.add_argument("--data", default=DATA, help="hub id or local .jsonl/.json/.parquet in s1K format")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or hub id (default: the model's)")
    p.add_argument("--thinking-column", default=None, help="default: deepseek_thinking_trajectory if present, "
                   "else thinking_trajectories")
    p.add_argument("--answer-column", default=None, help="default: the attempt that goes with the thinking column")
    p.add_argument("--out-dir", default=OUT_DIR)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--warmup-ratio", type=float, default=WARMUP_RATIO)
    p.add_argument("--decay-ratio", type=float, default=DECAY_RATIO,
                   help="cosine decay over this last share of the steps after warmup, the peak lr before it "
                   "(warmup-stable-decay); 1: cosine from the end of warmup, as s1")
    p.add_argument("--loss-average", default=LOSS_AVERAGE, choices=["sequence", "token"],
                   help="sequence: each sequence's mean loss counts the same (s1); token: every trained token of "
                   "the global batch counts the same, so long sequences weigh more")
    p.add_argument("--beta1", type=float, default=BETA1)
    p.add_argument("--beta2", type=float, default=BETA2)
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--grad-clip", type=float, default=GRAD_CLIP)
    p.add_argument("--global-batch", type=int, default=GLOBAL_BATCH)
    p.add_argument("--micro-batch", type=int, default=MICRO_BATCH)
    p.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    p.add_argument("--dtype", default=DTYPE, choices=["auto", "bfloat16", "float32"])
    p.add_argument("--activation-checkpointing", default="auto", choices=["auto", "on", "off"],
                   help="recompute each block in the backward pass; auto: on for block sizes above 2048")
    p.add_argument("--defer-grad-sync", action="store_true", help="accumulate unsharded gradients and "
                   "reduce once per step: less communication, but a full gradient copy per GPU (not for 32B)")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder block")
    p.add_argument("--offload", default="auto", choices=["auto", *OFFLOADS], help="keep the optimizer (fp32 "
                   "weights, gradients, AdamW state; its step on the CPU) and/or the checkpointed activations in "
                   "pinned host memory; auto: estimate at start-up and take the cheapest that fits (none on CPU)")
    p.add_argument("--estimate-memory", action="store_true", help="print the run's estimated peak memory per GPU "
                   "(from config.json only, no GPU needed) and exit")
    p.add_argument("--world-size", type=int, default=None, help="GPUs to estimate for (with --estimate-memory; "
                   "default: this machine's, else 8)")
    p.add_argument("--gpu-memory-gb", type=float, default=None, help="GPU memory to fit in (default: the GPU's, "
                   "else 80)")
    p.add_argument("--loss-chunk", type=int, default=1024,
                   help="tokens per chunk of the fused output head and cross-entropy (model.py)")
    p.add_argument("--save-every", type=int, default=SAVE_EVERY, help="checkpoint every N steps (and at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=1, help="how many of the newest checkpoints to keep")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out-dir")
    p.add_argument("--stop-at-step", type=int, default=None, help="save and stop after this step (the schedule "
                   "still spans all epochs; --resume continues)")
    p.add_argument("--seed", type=int, default=SEED, help="data order (and the init from scratch)")
    p.add_argument("--group-by-length", action="store_true", help="batch sequences of similar length together "
                   "(batches in random order): less padding, so faster steps where lengths vary (s1: off)")
    p.add_argument("--log-every", type=int, default=1, help="print a line every N steps (log.jsonl gets every step)")
    p.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to this wandb project (if installed)")
    p.add_argument("--init-from-scratch", action="store_true", help="random init (model.init_weights) of the "
                   "shape below instead of loading --model; needs --tokenizer")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-kv-head", type=int, default=2)
    p.add_argument("--mlp", type=int, default=384, help="intermediate size of the SwiGLU MLP")
    p.add_argument("--rope-theta", type=float, default=1e6, help="RoPE base of a model from scratch (Qwen2.5's 1e6)")
    p.add_argument("--tiny", action="store_true", help="defaults of the tiny CPU run: " +
                   " ".join(f"{k}={v}" for k, v in TINY.items()))
    args = p.parse_args(argv)
    if args.tiny:  # the preset replaces the defaults; flags given on the command line still win
        p.set_defaults(**TINY)
        args = p.parse_args(argv)
    return args


class TrainError(Exception):
    """A run that cannot go on; the message says what is wrong and what to do."""


# -----------------------------------------------------------------------------
# Processes, model and weights


def setup_distributed():
    """NCCL on GPUs, gloo on CPU. Under torchrun the environment says who we are; alone we are 1 of 1."""
    cuda = torch.cuda.is_available()
    # gloo carries what lives in host memory (an offloaded optimizer's gradient norms, the export); growable
    # allocator segments keep what a GPU reserves close to what its tensors use, which memory.py estimates.
    backend = "cuda:nccl,cpu:gloo" if cuda else "gloo"
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def scratch_config(args, tokenizer) -> Qwen2Config:
    # Round the vocabulary up to a multiple of 64 (as Qwen pads 151665 to 151936); ids past the
    # tokenizer's are never in the data, and the sampler must never emit them.
    vocab = math.ceil(len(tokenizer) / 64) * 64
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return Qwen2Config(vocab_size=vocab, hidden_size=args.n_embd, intermediate_size=args.mlp,
                       num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                       num_key_value_heads=args.n_kv_head, head_dim=args.n_embd // args.n_head,
                       max_position_embeddings=args.block_size, rope_theta=args.rope_theta, tie_word_embeddings=True,
                       torch_dtype="float32", eos_token_id=eos[0], bos_token_id=None)


def load_full_tensors(model, named_tensors):
    """
    Copy full tensors into the sharded (DTensor) parameters, one tensor at a time: each rank cuts its
    own shard out of the tensor it read (no communication), so no rank ever holds a second full copy.
    """
    params = model.state_dict()  # name -> sharded DTensor; a tied head is the embedding's entry
    for name, full in named_tensors:
        p = params[name]
        mine = distribute_tensor(full.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
        with torch.no_grad():
            p.to_local().copy_(mine.to_local())


def checkpointing(args) -> bool:
    return args.activation_checkpointing == "on" or (args.activation_checkpointing == "auto" and args.block_size > 2048)


def build_model(args, config, ckpt_dir, mesh, param_dtype, offload):
    """Build on the meta device, shard with FSDP2, allocate only this rank's shards, then fill them."""
    with torch.device("meta"):
        model = Qwen2(config)  # fp32 parameters: the optimizer's master weights
    placement = None if ckpt_dir is None else check_checkpoint(model, safetensors_files(ckpt_dir))
    model.gradient_checkpointing = checkpointing(args)
    # FSDP2 per decoder block, then the root; compute in param_dtype, reduce gradients in fp32, keep fp32
    # master weights (s1's bf16 recipe); with the optimizer offloaded, those live in host memory (memory.py).
    shard(model, mesh, param_dtype, offload, args.compile)
    if placement is not None:
        from safetensors import safe_open

        def tensors():  # memory-mapped: one tensor in RAM at a time
            for file in sorted(set(placement.values())):
                with safe_open(file, framework="pt") as f:
                    for name in f.keys():
                        if name in placement:
                            yield name, f.get_tensor(name)
        load_full_tensors(model, tensors())
    else:  # from scratch: every rank draws the same full init from the seed and keeps its shard
        full = Qwen2(config).init_weights(args.seed)
        load_full_tensors(model, full.state_dict().items())
        del full
    return model


def lr_at(step: int, total: int, warmup: int, peak: float, decay_ratio: float = 1.0) -> float:
    """Linear warmup, the peak held until the last `decay_ratio` of the remaining steps, then cosine to 0.
    With decay_ratio 1 it is transformers' cosine schedule (the first step has lr 0)."""
    if step < warmup:
        return peak * step / warmup
    decay_start = warmup + (1 - decay_ratio) * (total - warmup)
    if step < decay_start:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * (step - decay_start) / max(1, total - decay_start)))


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)  # a DTensor over shards: every rank joins .full_tensor()
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def training_flops(config: Qwen2Config, n_matmul: int, T: int) -> float:
    """Forward + backward FLOPs of one T-token sequence (recomputation not counted: this is MFU).
    n_matmul: the weights that do one multiply-add per token, all but an untied embedding (a lookup)."""
    attn = 2 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * T * T  # causal QK^T, AV
    return 3 * (2 * n_matmul * T + attn)  # the backward pass costs twice the forward


# -----------------------------------------------------------------------------
# Checkpoints: torch.distributed.checkpoint, written under a temporary name and renamed when complete


def checkpoints(out_dir: str) -> list[str]:
    """Complete checkpoints, oldest first. A save that crashed is still `.tmp-step_*`: never taken."""
    root = os.path.join(out_dir, "checkpoints")
    names = sorted(n for n in os.listdir(root) if re.fullmatch(r"step_\d+", n)) if os.path.isdir(root) else []
    return [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n, ".metadata"))]


def save_checkpoint(model, optim, own_state: dict, out_dir: str, rank: int, keep: int):
    step = own_state["step"]
    root = os.path.join(out_dir, "checkpoints")
    final, tmp = os.path.join(root, f"step_{step:06d}"), os.path.join(root, f".tmp-step_{step:06d}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    # Each rank writes its own shards of the weights and of AdamW's moments, in parallel.
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optim)}
    dcp.save(state, checkpoint_id=tmp)
    torch.save(own_state, os.path.join(tmp, f"train_state_rank{rank}.pt"))
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # the checkpoint exists under its real name only once it is whole
        for old in checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_checkpoint(model, optim, path: str, rank: int) -> dict:
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optim)}
    dcp.load(state, checkpoint_id=path)  # reshards if the number of processes changed
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optim, state["optim"])
    own = os.path.join(path, f"train_state_rank{rank}.pt")
    if not os.path.isfile(own):  # saved by fewer processes: the step and data order are the same for all
        own = os.path.join(path, "train_state_rank0.pt")
    return torch.load(own, weights_only=True)  # plain tensors and numbers: nothing is unpickled


def export_hf(model, config, out_dir, dtype, tokenizer, gen_config_src, rank):
    """Gather the full weights tensor by tensor (every rank takes part), write HF safetensors on rank 0."""
    full = {}
    for name, p in model.state_dict().items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        t = p.full_tensor()  # an all-gather: every rank must call it, in the same order
        if rank == 0:
            full[name] = t.to(device="cpu", dtype=dtype)
        del t
    if rank == 0:
        save_hf_checkpoint(full, config, out_dir)
        tokenizer.save_pretrained(out_dir)
        gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
        if gen_config_src and os.path.isfile(gen_config_src):  # keep the base model's sampling defaults
            with open(gen_config_src) as f:
                gen = json.load(f)
        with open(os.path.join(out_dir, ".tmp-generation_config.json"), "w") as f:
            json.dump(gen, f, indent=2)
        os.replace(os.path.join(out_dir, ".tmp-generation_config.json"),
                   os.path.join(out_dir, "generation_config.json"))
    dist.barrier()


# -----------------------------------------------------------------------------
# Training


def train(args):
    from tqdm import tqdm
    from transformers import AutoTokenizer

    rank, world, device = setup_distributed()
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    if args.dtype == "auto":
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    param_dtype = getattr(torch, args.dtype)

    # Refuse to write over another run before anything is written; every rank decides the same way.
    held = [n for n in ("log.jsonl", "checkpoints", "config.json") if os.path.exists(os.path.join(args.out_dir, n))]
    if held and not args.resume:
        raise TrainError(f"{args.out_dir} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                         "or choose another --out-dir")
    resume_from = checkpoints(args.out_dir)[-1] if args.resume and checkpoints(args.out_dir) else None
    dist.barrier()

    # Tokenizer, data, model config
    if args.init_from_scratch and not args.tokenizer:
        raise TrainError("--init-from-scratch needs --tokenizer (the tokenizer directory to build the vocabulary on)")
    # config.json and the tokenizer only: the weights (65 GB for 32B) come once the run is known to fit.
    config_src = None if args.init_from_scratch else config_dir(args.model)
    tok_src = args.tokenizer or args.model  # a directory or a hub id: its tokenizer files alone
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
    except Exception as e:
        raise TrainError(f"{tok_src}: could not load a tokenizer ({type(e).__name__}); pass --tokenizer") from None
    config = scratch_config(args, tokenizer) if args.init_from_scratch else load_config(config_src)
    examples, report = load_sft_data(args.data, tokenizer, args.block_size, args.thinking_column, args.answer_column)
    if args.global_batch % (world * args.micro_batch):
        raise TrainError(f"--global-batch {args.global_batch} is not a multiple of {world} processes x "
                         f"--micro-batch {args.micro_batch}")
    n, G = len(examples), args.global_batch
    lengths = tuple(len(ids) for ids, _ in examples) if args.group_by_length else None
    accum = G // (world * args.micro_batch)
    total_steps = args.epochs * steps_per_epoch(n, G)
    warmup = math.ceil(args.warmup_ratio * total_steps)
    stop = min(total_steps, args.stop_at_step or total_steps)

    # Before any weight is read: the offload that fits this run, or a refusal that says what would (memory.py).
    longest = max(len(ids) for ids, _ in examples) - 1  # the longest micro-batch's T
    offload = choose_offload(args.offload, memory_spec(args, config, world, longest), device,
                             gpu_memory_gb(args.gpu_memory_gb), say)
    ckpt_dir = None if args.init_from_scratch else resolve_checkpoint(args.model)  # a hub id: downloaded here
    mesh = init_device_mesh(device.type, (world,))
    model = build_model(args, config, ckpt_dir, mesh, param_dtype, offload)
    n_matmul = num_params(model) - (0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size)
    # No weight decay on biases and norm weights (as transformers' Trainer, which s1 used).
    params = list(model.parameters())  # a tied head appears once
    optim = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                               {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                              lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8)

    def own_state(step):
        """What DCP does not hold: where we are, what decides the data order and the schedule, the RNG."""
        order = epoch_order(n, min(step, total_steps - 1) // steps_per_epoch(n, G), args.seed, lengths, G)
        s = dict(step=step, seed=args.seed, n_examples=n, global_batch=G, total_steps=total_steps, warmup=warmup,
                 lr=args.lr, decay_ratio=args.decay_ratio, loss_average=args.loss_average,
                 data_order=torch.tensor(order), rng_cpu=torch.get_rng_state())
        if device.type == "cuda":
            s["rng_cuda"] = torch.cuda.get_rng_state()
        return s

    start = 0
    if resume_from:
        own = load_checkpoint(model, optim, resume_from, rank)
        now = own_state(int(own["step"]))
        # (lr, decay_ratio and loss_average are missing from checkpoints written before they were saved)
        differs = [k for k in ("seed", "n_examples", "global_batch", "total_steps", "warmup", "lr", "decay_ratio",
                               "loss_average") if k in own and own[k] != now[k]]
        if differs:
            was = ", ".join(f"{k}={own[k]:g}" if isinstance(own[k], float) else f"{k}={own[k]}" for k in differs)
            raise TrainError(f"{resume_from} was trained with a different {', '.join(differs)} ({was}); "
                             "resume with the same data and flags")
        if not torch.equal(own["data_order"], now["data_order"]):
            raise TrainError(f"{resume_from}: this dataset (or torch version, or --group-by-length) gives another "
                             "data order; resume with the data, flags and torch version of the interrupted run")
        start = int(own["step"])
        torch.set_rng_state(own["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in own:
            torch.cuda.set_rng_state(own["rng_cuda"])
    elif args.resume:
        say(f"no complete checkpoint in {args.out_dir}/checkpoints: starting from step 0")

    peak = None
    if device.type == "cuda" and param_dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)

    say(f"model: {config.num_hidden_layers} layers, {num_params(model) / 1e6:.1f}M params, {args.dtype}, "
        f"activation checkpointing {'on' if model.gradient_checkpointing else 'off'}")
    say(f"data: {describe_truncation(report, args.block_size)}")
    say(f"{world} processes x micro-batch {args.micro_batch} x {accum} accumulation = {G} sequences per step; "
        f"{total_steps} steps ({args.epochs} epochs), warmup {warmup}, " +
        (f"resuming at step {start} from {resume_from}" if start else "starting at step 0"))

    log_path = os.path.join(args.out_dir, "log.jsonl")
    wandb = None
    if master:
        os.makedirs(args.out_dir, exist_ok=True)
        kept = []
        if start and os.path.isfile(log_path):  # drop what a crashed run logged after its last checkpoint
            with open(log_path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= start]
        with open(log_path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(log_path + ".tmp", log_path)
        if args.wandb:
            try:
                import wandb
                wandb.init(project=args.wandb, config=vars(args), resume="allow")
            except ImportError:
                print("warning: --wandb given but wandb is not installed; logging to log.jsonl only")
                wandb = None

    last_ckpt = resume_from
    model.train()
    # The bar is for a terminal; a batch job's log gets the per-step lines only.
    bar = tqdm(total=total_steps, initial=start, disable=not (master and sys.stderr.isatty()), unit="step",
               dynamic_ncols=True)
    run_start = time.perf_counter()
    for step in range(start, stop):
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, warmup, args.lr, args.decay_ratio)
        for group in optim.param_groups:
            group["lr"] = lr
        batch_ids = global_batch_ids(step, n, G, args.seed, lengths)
        micro = rank_micro_batches(batch_ids, rank, world, args.micro_batch)
        # --loss-average token: a token's weight is G / (trained tokens of the whole global batch), so that the
        # mean over the G sequences below is the mean over all their tokens. Every rank knows the whole batch.
        per_token = G / sum(len(examples[i][0]) - examples[i][1] for i in batch_ids) \
            if args.loss_average == "token" else None
        stats = torch.zeros(3, dtype=torch.float64, device=device)  # sum of sequence losses, tokens, FLOPs
        for a, ids in enumerate(micro):
            x, y = (t.to(device) for t in collate(examples, ids))  # (B, T) each
            if args.defer_grad_sync:
                model.set_requires_gradient_sync(a == len(micro) - 1)
            # Each sequence's loss is the mean over its targets: weight each target token by 1 / their
            # number in its sequence, and the model's weighted sum is the micro-batch's sum of those means.
            trained = y != IGNORE  # (B, T)
            weights = trained / trained.sum(1, keepdim=True) if per_token is None else trained * per_token
            with offloaded_activations(offload, device):  # what backward keeps, in host memory or not
                seq_losses = model(x, targets=y, loss_weights=weights, loss_chunk=args.loss_chunk)
            # FSDP averages gradients over the processes, so each divides by its own share of the batch:
            # the gradient is then that of the mean over all G sequences.
            (seq_losses / (accum * args.micro_batch)).backward()
            inputs = [len(examples[i][0]) - 1 for i in ids]
            stats[0] += seq_losses.detach()  # no host sync: read once per step, after the all-reduce
            stats[1] += sum(inputs)
            stats[2] += sum(training_flops(config, n_matmul, T) for T in inputs)
        dist.all_reduce(stats)
        loss = stats[0].item() / G
        grad_norm = clip_grad_norm(params, args.grad_clip).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainError(f"loss {loss} / grad norm {grad_norm} is not finite at step {step + 1}; stopped without "
                             f"updating. Last good checkpoint: {last_ckpt or 'none'}. Lower --lr, or check the data")
        optim.step()
        optim.zero_grad(set_to_none=True)

        dt = time.perf_counter() - t0
        if device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(device) / 1e9
        else:
            import resource
            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB -> GB (peak RSS)
        tokens = int(stats[1])
        rec = dict(step=step + 1, epoch=step // steps_per_epoch(n, G), loss=loss, lr=lr, grad_norm=grad_norm,
                   tokens=tokens, tokens_per_s=tokens / dt, tokens_per_s_per_process=tokens / dt / world,
                   mfu=stats[2].item() / dt / (peak * world) if peak else None, peak_mem_gb=mem, time_s=dt)
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if wandb:
                wandb.log(rec, step=step + 1)
            mfu = f" mfu {rec['mfu']:.1%}" if peak else ""
            eta = (time.perf_counter() - run_start) / (step + 1 - start) * (stop - step - 1)
            line = (f"step {step + 1}/{total_steps} loss {loss:.4f} lr {lr:.2e} gnorm {grad_norm:.3f} "
                    f"{rec['tokens_per_s']:,.0f} tok/s{mfu} mem {mem:.1f}GB eta {eta / 60:.1f}min")
            bar.set_postfix_str(line.split(" ", 2)[2])
            bar.update(1)
            if (step + 1) % args.log_every == 0:
                bar.write(line) if not bar.disable else print(line, flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == stop:
            last_ckpt = save_checkpoint(model, optim, own_state(step + 1), args.out_dir, rank, args.keep_checkpoints)
    bar.close()

    if stop < total_steps:
        say(f"stopped after step {stop} of {total_steps}; continue with --resume")
    else:
        export_hf(model, config, args.out_dir, param_dtype, tokenizer,
                  ckpt_dir and os.path.join(ckpt_dir, "generation_config.json"), rank)
        say(f"exported the fine-tuned model to {args.out_dir} (Hugging Face format)")
        if args.tiny and master:  # the first run says whether it learned what it was meant to (tiny.py)
            from tiny import self_check_report
            say(self_check_report(args.out_dir, args.data, args.seed))
    if wandb:
        wandb.finish()  # here, not at exit: the script ends with os._exit, which runs no exit handlers


# -----------------------------------------------------------------------------
# Memory: what the run needs per GPU, estimated from its config alone (memory.py)


def memory_spec(args, config, world, seq_len) -> dict:
    return dict(config=config.to_hf(), world=world, seq_len=seq_len, micro_batch=args.micro_batch,
                accum=args.global_batch // (world * args.micro_batch), dtype=args.dtype,
                checkpointing=checkpointing(args), loss_chunk=args.loss_chunk, defer_grad_sync=args.defer_grad_sync)


def estimate_memory(args):
    """--estimate-memory: the run's peak per GPU from its config alone; no GPU, weights or processes."""
    world = args.world_size or torch.cuda.device_count() or 8
    if world < 1 or args.global_batch % (world * args.micro_batch):
        raise TrainError(f"--world-size {world}: --global-batch {args.global_batch} must be a multiple of the world "
                         f"size x --micro-batch {args.micro_batch}")
    args.dtype = "bfloat16" if args.dtype == "auto" else args.dtype  # as on a GPU
    local_data = os.path.exists(args.data)
    if args.init_from_scratch or local_data:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    config = scratch_config(args, tokenizer) if args.init_from_scratch else load_config(config_dir(args.model))
    T = args.block_size
    if local_data:  # the longest sequence, as the run will see it
        T = max(len(ids) for ids, _ in load_sft_data(args.data, tokenizer, args.block_size, args.thinking_column,
                                                    args.answer_column)[0]) - 1
    print_estimate(memory_spec(args, config, world, T), os.path.basename(args.model.rstrip("/")), args.offload,
                   gpu_memory_gb(args.gpu_memory_gb))


def main(argv=None):
    args = get_args(argv)
    try:
        if args.world_size is not None and not args.estimate_memory:
            raise TrainError("--world-size is for --estimate-memory; a run's world size is torchrun's processes")
        if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
            raise TrainError(f"--gpu-memory-gb {args.gpu_memory_gb:g}: give the GPU's memory in GB, such as 80")
        if not 0 < args.decay_ratio <= 1:
            raise TrainError(f"--decay-ratio {args.decay_ratio:g}: give the share of the steps to decay over, "
                             "above 0 and at most 1 (1: cosine all the way, as s1)")
        estimate_memory(args) if args.estimate_memory else train(args)
    except (TrainError, DataError, CheckpointError, DoesNotFit) as e:
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without the interpreter's teardown. A gloo worker thread can still be letting go of the last
    # collective's tensors while Python shuts down; needing the GIL then, it aborts the process
    # (pytorch/pytorch#190489) and torchrun reports a finished run as failed. Every file is written and
    # closed by now and the process group is destroyed, so there is nothing left to tear down.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
