"""train.py on CPU (gloo): loss falls, 2 processes = 1, stop + --resume = uninterrupted, HF export, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, make_tiny_checkpoint, run_torchrun
from model import Qwen2, load_config
from test_data import make_byte_tokenizer, s1k_rows, write_jsonl

VOCAB = 320  # the byte tokenizer's 259 entries, padded


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matmuls run faster on one thread than on several fighting for a busy machine's cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    tok = make_byte_tokenizer(d / "tok")
    data = write_jsonl(d / "data.jsonl", s1k_rows(16))
    ckpt, _ = make_tiny_checkpoint(d / "ckpt", vocab_size=VOCAB)
    return dict(dir=d, tok=tok, data=data, ckpt=ckpt)


def base_args(s, out, *extra):
    # 16 examples, 8 per step, 2 epochs: 4 steps. block 256 holds every example whole.
    return ["--model", s["ckpt"], "--tokenizer", s["tok"], "--data", s["data"], "--out-dir", str(out),
            "--block-size", "256", "--global-batch", "8", "--epochs", "2", "--lr", "1e-3", "--warmup-ratio", "0.25",
            "--save-every", "100", *map(str, extra)]


def log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def torchrun(args, nproc=2):
    return run_torchrun(ROOT / "train.py", args, nproc)


def dcp_model(ckpt_path, config):
    """The weights of a DCP checkpoint in a plain (unsharded) model, read by torch.distributed.checkpoint."""
    import warnings
    import torch.distributed.checkpoint as dcp
    m = Qwen2(config)
    state = {"model": m.state_dict()}
    with warnings.catch_warnings():  # "no process group: loading in a single process", as intended
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=ckpt_path)
    m.load_state_dict(state["model"])
    return m.eval()


def test_resume_and_two_processes_reproduce_the_uninterrupted_run(setup, tmp_path):
    whole, split, ranks = tmp_path / "whole", tmp_path / "split", tmp_path / "ranks"
    train.main(base_args(setup, whole))  # 1 process: micro-batch 1 x 8 accumulation
    ref = log(whole)
    assert [r["step"] for r in ref] == [1, 2, 3, 4] and ref[0]["lr"] == 0.0 and ref[1]["lr"] == 1e-3

    train.main(base_args(setup, split, "--stop-at-step", "2"))
    assert len(log(split)) == 2 and not os.path.exists(split / "config.json")  # no export before the end
    with open(split / "log.jsonl", "a") as f:  # what a run that crashed after its checkpoint had logged
        f.write(json.dumps(dict(step=3, loss=0.0)) + "\n")
    train.main(base_args(setup, split, "--resume"))
    got = log(split)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(ref, got):  # the same process count: the very same numbers
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6, rel=0)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-6, rel=0)

    # 2 processes under torchrun: micro-batches of 2 padded sequences with deferred gradient sync for two
    # steps, then resumed with micro-batch 1 and a gradient reduce-scatter after every micro-batch.
    torchrun(base_args(setup, ranks, "--micro-batch", "2", "--defer-grad-sync", "--stop-at-step", "2"))
    torchrun(base_args(setup, ranks, "--resume"))
    got = log(ranks)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(ref, got):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"], (a, b)

    # The 2-process export (gathered from both shards) holds the weights of the final checkpoint.
    from transformers import AutoModelForCausalLM
    config = load_config(str(ranks))
    trained = dcp_model(str(ranks / "checkpoints" / "step_000004"), config)
    hf = AutoModelForCausalLM.from_pretrained(str(ranks)).eval()
    x = torch.randint(0, 259, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, trained(x), atol=1e-4, rtol=1e-4)
    assert os.listdir(ranks / "checkpoints") == ["step_000004"]  # --keep-checkpoints 1


def test_loss_averages_match_transformers_loss(setup, tmp_path):
    # The first step's loss is the initial model's: for "sequence" (s1's) the mean of each sequence's mean
    # over its answer tokens; for "token" the mean over every answer token of the batch, which is what
    # transformers' loss gives for the padded batch at once. Its gradient is right on 2 processes too.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import data
    hf = AutoModelForCausalLM.from_pretrained(setup["ckpt"]).eval()
    examples, _ = data.load_sft_data(setup["data"], AutoTokenizer.from_pretrained(setup["tok"]), 256)
    x, y = data.collate(examples, data.global_batch_ids(0, len(examples), 8, 42))
    with torch.no_grad():
        logits = hf(x).logits  # y is x shifted: position t predicts y[:, t]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, ignore_index=data.IGNORE, reduction="none")
    trained = y != data.IGNORE  # (B, T)
    # transformers is handed the whole sequences, with the prompt and padding labelled -100, and shifts itself.
    full = torch.cat([x, torch.where(trained[:, -1:], y[:, -1:], 0)], 1)
    labels = torch.cat([torch.full_like(y[:, :1], data.IGNORE), y], 1)
    with torch.no_grad():
        want = dict(sequence=((nll * trained).sum(1) / trained.sum(1)).mean().item(),
                    token=hf(full, labels=labels).loss.item())
    assert abs(want["sequence"] - want["token"]) > 1e-3  # the batch's answers differ in length: the two differ
    for average, loss in want.items():
        out = tmp_path / average
        train.main(base_args(setup, out, "--loss-average", average, "--stop-at-step", "2"))
        assert log(out)[0]["loss"] == pytest.approx(loss, abs=1e-5, rel=0)
    ranks = tmp_path / "ranks"
    torchrun(base_args(setup, ranks, "--loss-average", "token", "--micro-batch", "2", "--stop-at-step", "2"))
    for a, b in zip(log(tmp_path / "token"), log(ranks), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"]


def test_group_by_length_resumes_and_refuses_another_order(setup, tmp_path, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train.main(base_args(setup, whole, "--group-by-length"))
    train.main(base_args(setup, split, "--group-by-length", "--stop-at-step", "2"))
    expect_error(base_args(setup, split, "--resume"), capsys, "gives another data order")
    train.main(base_args(setup, split, "--group-by-length", "--resume"))
    assert [r["loss"] for r in log(whole)] == [r["loss"] for r in log(split)]


def test_compiled_blocks_with_checkpointing_give_the_same_steps(setup, tmp_path, aot_eager, fresh_compile):
    # The GPU recipe at long blocks: each decoder block compiled before fully_shard wraps it, and run
    # under activation checkpointing. Neither may change a number. aot_eager traces autograd's joint
    # graph through FSDP2's hooks as a GPU compile would.
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train.main(base_args(setup, eager, "--stop-at-step", "2"))
    assert fresh_compile() == 0  # the eager run compiled nothing
    train.main(base_args(setup, compiled, "--stop-at-step", "2", "--compile", "--activation-checkpointing", "on"))
    assert fresh_compile() >= 1  # the blocks really were compiled
    for a, b in zip(log(eager), log(compiled), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6, rel=0)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_loss_falls_from_scratch_and_export_loads_in_transformers(setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "scratch"
    train.main(["--init-from-scratch", "--n-layer", "2", "--n-embd", "64", "--n-head", "4", "--n-kv-head", "2",
                "--mlp", "128", "--tokenizer", setup["tok"], "--data", setup["data"], "--out-dir", str(out),
                "--block-size", "256", "--global-batch", "4", "--micro-batch", "2", "--epochs", "2", "--lr", "1e-2",
                "--warmup-ratio", "0", "--activation-checkpointing", "on", "--save-every", "3"])
    losses = [r["loss"] for r in log(out)]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0, losses  # random init starts near ln(320) = 5.8
    rec = log(out)[-1]
    assert rec["tokens"] > 0 and rec["tokens_per_s"] > 0 and rec["mfu"] is None and rec["peak_mem_gb"] > 0

    config = load_config(str(out))
    shape = (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.intermediate_size)
    assert shape == (320, 64, 2, 128)
    trained = dcp_model(str(out / "checkpoints" / "step_000008"), config)
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 12+30?"}], add_generation_prompt=True)
    ids = torch.tensor([ids["input_ids"] if hasattr(ids, "keys") else ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, trained(ids), atol=1e-5, rtol=1e-5)
        assert Qwen2.from_pretrained(str(out))(ids).allclose(trained(ids), atol=1e-5)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")


def test_untied_head_in_bf16_mixed_precision(setup, tmp_path):
    # The 7B-32B layout (a separate lm_head) and s1's bf16 compute with fp32 master weights and reductions.
    from transformers import AutoModelForCausalLM
    ckpt, _ = make_tiny_checkpoint(tmp_path / "untied", vocab_size=VOCAB, tie=False)
    out = tmp_path / "bf16"
    args = base_args(setup, out, "--dtype", "bfloat16", "--epochs", "1")
    args[args.index("--model") + 1] = ckpt
    train.main(args)
    fp32 = tmp_path / "fp32"
    args[args.index("--out-dir") + 1], args[args.index("--dtype") + 1] = str(fp32), "float32"
    train.main(args)
    for a, b in zip(log(fp32), log(out)):  # bf16 rounding only
        assert abs(a["loss"] - b["loss"]) < 2e-2 and a["loss"] != b["loss"]
    config = load_config(str(out))
    assert config.torch_dtype == "bfloat16" and not config.tie_word_embeddings
    master = dcp_model(str(out / "checkpoints" / "step_000002"), config)  # fp32 master weights
    with torch.no_grad():
        for p in master.parameters():
            p.copy_(p.to(torch.bfloat16))  # what the export rounds them to
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
    x = torch.randint(0, 259, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, master(x), atol=1e-4, rtol=1e-4)


def test_lr_schedule_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup
    total, warmup = 315, 16  # s1: ceil(0.05 * 315) = 16
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-5)
    sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    for step in range(total):
        assert train.lr_at(step, total, warmup, 1e-5) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_warmup_stable_decay_matches_transformers():
    """--decay-ratio (the tiny run's schedule): the peak held, then cosine over the last share of the steps."""
    from transformers import get_wsd_schedule
    total, warmup, ratio = 316, 16, 0.3  # 300 steps after warmup: 210 at the peak, then 90 of cosine
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    sched = get_wsd_schedule(opt, warmup, num_decay_steps=90, num_training_steps=total)
    for step in range(total):
        assert train.lr_at(step, total, warmup, 2e-3, ratio) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()
    assert train.lr_at(100, total, warmup, 2e-3, ratio) == 2e-3 > train.lr_at(250, total, warmup, 2e-3, ratio)


def test_defaults_are_s1_and_tiny_preset():
    a = train.get_args([])
    assert (a.model, a.data, a.epochs, a.lr, a.warmup_ratio, a.decay_ratio, a.beta1, a.beta2, a.weight_decay,
            a.grad_clip, a.global_batch, a.micro_batch, a.block_size) == (
        "Qwen/Qwen2.5-32B-Instruct", "simplescaling/s1K-1.1", 5, 1e-5, 0.05, 1.0, 0.9, 0.95, 1e-4, 1.0, 16, 1, 32768)
    t = train.get_args(["--tiny"])
    assert all(getattr(t, k) == v for k, v in train.TINY.items())
    assert train.get_args(["--tiny", "--lr", "0.5"]).lr == 0.5  # a flag beats the preset


def expect_error(args, capsys, match):
    with pytest.raises(SystemExit) as e:
        train.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err, err
    return err


def test_bad_input(setup, tmp_path, capsys):
    out = tmp_path / "held"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1}\n')
    expect_error(base_args(setup, out), capsys, "already holds a run (log.jsonl); pass --resume")
    assert (out / "log.jsonl").read_text() == '{"step": 1}\n'  # nothing lost

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "attempt": "a"}])
    args = base_args(setup, tmp_path / "o1")
    args[args.index("--data") + 1] = bad
    expect_error(args, capsys, "bad.jsonl: no column 'thinking_trajectories'")
    (tmp_path / "empty.jsonl").write_text("")
    args[args.index("--data") + 1] = str(tmp_path / "empty.jsonl")
    expect_error(args, capsys, "empty.jsonl: the dataset is empty")
    expect_error(base_args(setup, tmp_path / "o2", "--block-size", "40"), capsys, "shorter than the prompt")
    expect_error(base_args(setup, tmp_path / "o3", "--global-batch", "6", "--micro-batch", "4"), capsys,
                 "not a multiple")
    expect_error(["--init-from-scratch", "--data", setup["data"], "--out-dir", str(tmp_path / "o4")], capsys,
                 "needs --tokenizer")
    expect_error(base_args(setup, tmp_path / "o5", "--decay-ratio", "0"), capsys, "--decay-ratio 0: give the share")
    assert not any(os.path.exists(tmp_path / f"o{i}") for i in range(1, 6))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path, capsys):
    out = tmp_path / "nan"
    # lr 1e35 with no warmup: the first update blows the weights up, the second step's loss is not finite
    err = expect_error(base_args(setup, out, "--lr", "1e35", "--warmup-ratio", "0", "--save-every", "1"),
                       capsys, "is not finite at step 2")
    assert "step_000001" in err
    assert os.listdir(out / "checkpoints") == ["step_000001"] and len(log(out)) == 1
    assert not os.path.exists(out / "config.json")
    # a resume must use the run's data and flags, or the loss curve would silently differ
    same = ["--lr", "1e35", "--warmup-ratio", "0", "--resume"]
    expect_error(base_args(setup, out, *same, "--seed", "7"), capsys, "different seed (seed=42)")
    expect_error(base_args(setup, out, *same, "--epochs", "3"), capsys, "different total_steps (total_steps=4)")
    expect_error(base_args(setup, out, "--lr", "1e-3", *same[2:]), capsys, "different lr (lr=1e+35)")
    expect_error(base_args(setup, out, *same, "--decay-ratio", "0.5", "--loss-average", "token"), capsys,
                 "different decay_ratio, loss_average (decay_ratio=1, loss_average=sequence)")


def test_error_is_one_line_without_traceback(setup, tmp_path):
    out = tmp_path / "held"
    out.mkdir()
    (out / "log.jsonl").write_text("{}\n")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *base_args(setup, out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


def test_torchrun_sh_commands():
    env = dict(os.environ, DRY_RUN="1", NPROC_PER_NODE="8", PATH="/usr/bin:/bin")
    r = subprocess.run(["bash", str(ROOT / "torchrun.sh"), "--block-size", "20000", "--out-dir", "a b"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "torchrun --nnodes=1 --node_rank=0 --nproc_per_node=8" in r.stderr
    assert r.stderr.strip().endswith("train.py --block-size 20000 --out-dir a\\ b")
    env.update(NNODES="2", NODE_RANK="1", MASTER_ADDR="node0")
    r = subprocess.run(["bash", str(ROOT / "torchrun.sh")], capture_output=True, text=True, env=env, timeout=30)
    assert "--nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr=node0 --master_port=29500 train.py" in r.stderr
    env = dict(os.environ, DRY_RUN="1", NPROC_PER_NODE="8", SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="2",
               MASTER_ADDR="node0")
    r = subprocess.run(["bash", str(ROOT / "torchrun.sh"), "--resume"], capture_output=True, text=True, env=env,
                       timeout=30)
    assert ("srun --nodes=2 --ntasks-per-node=1 torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=42 "
            "--rdzv_backend=c10d --rdzv_endpoint=node0:29500 train.py --resume") in r.stderr


def test_every_offload_choice_gives_the_plain_runs_steps_and_resumes(setup, tmp_path, capsys):
    # Offload moves tensors, never changes a number: fp32, checkpointed blocks (whose inputs activation
    # offload moves). Activation offload is each process's own affair: 1 process, as the plain run. The
    # optimizer's is sharded: 2 processes under torchrun, and as a checkpoint holds the optimizer's state,
    # which it keeps in host memory, the run with both stops after step 2 and resumes from its checkpoint.
    args = lambda out, choice, *extra: base_args(setup, tmp_path / out, "--offload", choice,
                                                 "--activation-checkpointing", "on", *extra)
    train.main(args("plain", "auto"))
    assert "offload: none (auto: on a CPU there is no GPU memory to save)" in capsys.readouterr().out
    train.main(args("activations", "activations"))
    torchrun(args("optimizer", "optimizer"))
    torchrun(args("optimizer+activations", "optimizer+activations", "--stop-at-step", "2"))
    torchrun(args("optimizer+activations", "optimizer+activations", "--resume"))
    ref = log(tmp_path / "plain")
    for choice in ("activations", "optimizer", "optimizer+activations"):
        got = log(tmp_path / choice)
        assert [r["step"] for r in got] == [1, 2, 3, 4], choice
        for a, b in zip(ref, got):
            assert abs(a["loss"] - b["loss"]) <= 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5, (choice, a, b)
