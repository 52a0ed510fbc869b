"""memory.py: the estimate against a real run and against arithmetic, offload, auto's choice, and
train.py --estimate-memory's output and bad input."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import fits
import memory
import train
from conftest import ROOT, SHARED_DATA
from model import Qwen2, Qwen2Config, load_config, num_params

GB = 1e9
# Small enough for seconds per estimate, large enough that the tensors dwarf a process's own memory.
SMALL = Qwen2Config(vocab_size=32000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64)


# For the command line's tests, where the numbers do not matter: an estimate in a second or two.
TINY = Qwen2Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16)


def config_dir(path, **change):
    d = dict(TINY.to_hf(), **change)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(d))
    return str(path)


def test_estimate_matches_the_same_run_with_real_tensors():
    # The step the estimate runs on fake tensors, run for real on this CPU in a fresh process: its peak RSS
    # above the memory before the model existed (malloc maps every block of 64 kB or more on its own, so
    # freed memory leaves the RSS at once). fp32, 1 process, checkpointing, 2 micro-batches, 1024 tokens.
    spec = dict(config=SMALL.to_hf(), seq_len=1024, offloads=["none"], dtype="float32", steps=0)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "memory.py"), "compare", json.dumps(spec)], capture_output=True,
                       text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    (got,) = json.loads(r.stdout.strip().splitlines()[-1])
    est, real = got["estimate"], got["peak"]
    assert est["host"] < 1e6 and 0.3 * GB < real < 0.5 * GB  # (0.389 GB when written)
    assert abs(est["gpu"] - real) < 0.1 * real, (est["gpu"], real)  # (0.2% when written)


def test_estimate_agrees_with_arithmetic_and_offload_moves_what_it_says():
    # 2 GPUs, bf16 compute: the sharded fp32 weights, their gradients and AdamW's two moments are 4, 4 and
    # 8 bytes per parameter, halved; the checkpointed block inputs are L x T x C bf16 values.
    n, world, T = num_params(Qwen2(SMALL)), 2, 1024
    est = {o: memory.estimate(SMALL, world, T, accum=2, offload=o) for o in memory.OFFLOADS}
    rows = est["none"]["rows"]
    assert rows["parameters (sharded, fp32)"] == pytest.approx(4 * n / world, rel=0.01)
    assert rows["gradients"] == pytest.approx(4 * n / world, rel=0.01)
    assert rows["optimizer state (AdamW)"] == pytest.approx(8 * n / world, rel=0.01)
    assert est["none"]["host"] < 1e6  # nothing offloaded, nothing on the host

    states = 16 * n / world
    for o in ("optimizer", "optimizer+activations"):  # weights, gradients and AdamW leave the GPU
        r = est[o]["rows"]
        assert r["parameters (sharded, fp32)"] + r["gradients"] + r["optimizer state (AdamW)"] == 0
        assert est[o]["host"] >= states
    block_inputs = SMALL.num_hidden_layers * T * SMALL.hidden_size * 2
    assert est["activations"]["host"] >= block_inputs  # (+ the rotary tables and the final norm's input)
    assert est["none"]["gpu"] - est["optimizer"]["gpu"] > 0.9 * states
    assert est["optimizer"]["gpu"] > est["optimizer+activations"]["gpu"]
    assert est["none"]["gpu"] > est["activations"]["gpu"]


def test_a_deep_model_extrapolated_from_shallow_traces_is_the_full_trace_to_the_byte():
    # A model deeper than memory.SHALLOW is traced at 4, 5 and 6 layers and each phase's peak extrapolated;
    # here against tracing the whole model: every row, the peak, the host memory, the phase.
    # 1 GPU, 16 micro-batches, 128 tokens: 4-6 layers peak in the forward pass, 10 in the optimizer step
    # (its temporaries grow faster per layer), which one line through the shallow peaks would miss by 3.6%.
    deep = dataclasses.replace(TINY, num_hidden_layers=10)
    run = dict(world=1, seq_len=128, micro_batch=1, accum=16, param_dtype=torch.bfloat16, checkpointing=True,
               offload="none", loss_chunk=1024, defer_grad_sync=False)
    shallow = {n: memory.trace(dataclasses.replace(TINY, num_hidden_layers=n), **run) for n in memory.SHALLOW}
    full = memory.trace(deep, **run)
    assert memory.extrapolate(shallow, 10) == full
    gpu_peak = lambda phases: max(p["gpu"]["Total"] for _, p in phases)
    peaks = [gpu_peak(shallow[n]) for n in memory.SHALLOW]
    one_line = peaks[-1] + (10 - memory.SHALLOW[-1]) * (peaks[-1] - peaks[-2])
    assert one_line < 0.97 * gpu_peak(full)
    # estimate() end to end: 8 GPUs, offloaded activations, 7 layers.
    run, deep = dict(world=8, seq_len=1024, accum=2, offload="activations"), dataclasses.replace(TINY, num_hidden_layers=7)
    fast, whole = memory.estimate(deep, **run), memory.estimate(deep, exact=True, **run)
    assert fast["layers_traced"] == [4, 5, 6] and whole["layers_traced"] == [7] and whole["host"] > 0
    assert {k: fast[k] for k in ("gpu", "host", "rows", "phase")} == {k: whole[k] for k in ("gpu", "host", "rows", "phase")}


def test_extrapolation_refuses_traces_that_are_not_on_a_line(monkeypatch):
    # Each phase's peak, kind by kind, on a line through 4, 5 and 6 layers: extrapolated to the byte; off
    # the line by a byte, or a different sequence of phases, and the estimate traces the whole model.
    phase = lambda name, n: (name, {"gpu": {"Total": 100 + 10 * n, "Temp": 100}, "cpu": {"Total": 3 * n}})
    traces = {n: [phase("forward", n), phase("backward", n)] for n in (4, 5, 6)}
    assert memory.extrapolate(traces, 64) == [phase("forward", 64), phase("backward", 64)]
    off = dict(traces)
    off[6] = [phase("forward", 6), ("backward", {"gpu": {"Total": 161, "Temp": 100}, "cpu": {"Total": 18}})]
    assert memory.extrapolate(off, 64) is None
    assert memory.extrapolate({**traces, 5: traces[5][:1]}, 64) is None
    monkeypatch.setattr(memory, "extrapolate", lambda traces, depth: None)
    e = memory.estimate(dataclasses.replace(TINY, num_hidden_layers=7), 1, 256)
    assert e["layers_traced"] == [7]


def test_auto_picks_the_cheapest_that_fits_with_headroom():
    e = lambda gpu, host=0: dict(gpu=gpu * GB, host=host * GB)
    est = {"none": e(90), "activations": e(80, 20), "optimizer": e(45, 80), "optimizer+activations": e(30, 90)}
    assert memory.pick(est, 141) == "none"
    assert memory.pick(est, 90) == "activations"  # none needs 90 of 90 GB: no 5% spare
    assert memory.pick(est, 84) == "optimizer"  # activations: 80 > 0.95 x 84
    assert memory.pick(est, 40) == "optimizer+activations"
    assert memory.pick(est, 24) is None
    assert memory.pick(est, 80, host_free_gb=700, gpus_per_node=8) == "optimizer"  # 8 x 80 GB of pinned memory
    assert memory.pick(est, 80, host_free_gb=600, gpus_per_node=8) is None  # fits the GPUs, not the node
    # On a CPU, auto is none without an estimate.
    said = []
    assert memory.choose_offload("auto", {}, torch.device("cpu"), 80, said.append) == "none" and "on a CPU" in said[0]


def test_auto_picks_each_choice_as_the_gpu_shrinks(tmp_path, capsys):
    # Real estimates of a tiny run on 1 GPU (fake tensors), and GPUs just big enough for each choice with
    # 5% spare: auto takes that one, at start-up (decide) and in --estimate-memory's report alike.
    est = {o: memory.estimate(TINY, 1, 1024, accum=16, offload=o) for o in memory.OFFLOADS}
    peaks = [est[o]["gpu"] for o in memory.OFFLOADS]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4, peaks  # each offload saves memory
    for o in memory.OFFLOADS:
        gpu_gb = est[o]["gpu"] / 0.95 / GB * 1.0001
        picked, line = memory.decide("auto", est, gpu_gb, host_free_gb=100, per_node=8, what="this run")
        assert picked == o and line.startswith(f"offload: {o} (auto: the cheapest that leaves 5%"), line
        report = memory.report(est, gpu_gb, "auto", 1)
        assert report[-2] == f"offload auto: {o}, the cheapest choice that fits"
        assert report[-1] == f"peak per GPU: {est[o]['gpu'] / GB:.1f} GB of {gpu_gb:g} GB (fits)"
    small = est["optimizer+activations"]["gpu"] / 0.95 / GB * 0.999  # nothing fits: one line, what would
    report = memory.report(est, small, "auto", 1)
    assert re.split(r"\s{2,}", report[0].strip()) == ["GB per GPU, at its peak", *memory.OFFLOADS]
    assert report[-2].startswith("offload auto: nothing fits; the run needs an estimated")
    assert report[-1] == f"peak per GPU: {est['optimizer+activations']['gpu'] / GB:.1f} GB of {small:g} GB (does not fit)"
    with pytest.raises(memory.DoesNotFit) as e:
        memory.decide("auto", est, small, 100, 8, "this run")
    assert "this run even with --offload optimizer+activations needs an estimated" in str(e.value)
    assert "more GPUs" in str(e.value) and "\n" not in str(e.value)
    need = est["optimizer"]["host"] * 8 / GB  # the optimizer fits the GPU, but not the node's host memory
    with pytest.raises(memory.DoesNotFit, match="--offload optimizer fits this run on the GPUs but needs"):
        memory.decide("auto", est, est["optimizer"]["gpu"] / 0.95 / GB * 1.0001, need * 0.9, 8, "this run")
    with pytest.raises(memory.DoesNotFit, match="with --offload none needs an estimated"):
        memory.decide("none", {"none": est["none"]}, est["none"]["gpu"] / GB * 0.99, 100, 8, "this run")

    # The command line estimates in auto's order until one fits, and stops there.
    gpu_gb = f"{est['optimizer']['gpu'] / 0.95 / GB * 1.0001:.6f}"
    out = estimate_cli("--model", config_dir(tmp_path / "tiny"), "--world-size", 1, "--block-size", 1024,
                       "--gpu-memory-gb", gpu_gb, "--activation-checkpointing", "on", capsys=capsys)
    assert re.split(r"\s{2,}", out[1].strip()) == ["GB per GPU, at its peak", "none", "activations", "optimizer"]
    assert out[-2] == "offload auto: optimizer, the cheapest choice that fits"
    assert out[-1] == f"peak per GPU: {est['optimizer']['gpu'] / GB:.1f} GB of {float(gpu_gb):g} GB (fits)"


def estimate_cli(*args, capsys):
    train.main(["--estimate-memory", *map(str, args)])
    return capsys.readouterr().out.strip().splitlines()


def test_estimate_memory_prints_the_table_and_the_verdict(tmp_path, capsys):
    cfg = config_dir(tmp_path / "tiny")
    out = estimate_cli("--model", cfg, "--world-size", 8, "--block-size", 1024, "--offload", "none",
                       "--gpu-memory-gb", 80, capsys=capsys)
    assert out[0] == ("estimating tiny (0.1M params) on 8 GPUs of 80 GB: 1024 tokens a sequence, micro-batch 1 x 2 "
                      "accumulation, bfloat16, checkpointing off, --offload none")
    table = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in out[1:-2])}
    assert table["GB per GPU, at its peak"] == ["none"]
    peak = float(table["peak per GPU"][0])
    assert out[-1] == f"peak per GPU: {peak:.1f} GB of 80 GB (fits)"


def test_estimate_memory_last_line_and_exit_code(tmp_path):
    # As a user runs it: a process of its own, exit 0 whether it fits or not, the verdict last.
    cfg = config_dir(tmp_path / "tiny")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--estimate-memory", "--model", cfg, "--world-size",
                        "16", "--block-size", "512", "--offload", "optimizer", "--gpu-memory-gb", "24"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("peak per GPU: ") and last.endswith(" GB of 24 GB (fits)"), last


@pytest.mark.skipif(not (SHARED_DATA / "qwen2.5-configs").is_dir(), reason="needs ../shared/data/qwen2.5-configs")
def test_every_qwen25_config_is_accepted():
    # The estimate builds each size from its config.json alone; here only the build (the estimate of the
    # large ones takes minutes: python fits.py).
    for size in fits.SIZES:
        config = load_config(str(SHARED_DATA / "qwen2.5-configs" / f"Qwen2.5-{size}-Instruct"))
        with torch.device("meta"):
            n = num_params(Qwen2(config))
        assert abs(n / 1e9 - float(size[:-1])) < 0.25 * float(size[:-1]) + 0.2, (size, n)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    cfg = config_dir(tmp_path / "tiny")
    refused = config_dir(tmp_path / "sliding", use_sliding_window=True)
    cases = [(["--world-size", "8"], "--world-size is for --estimate-memory"),
             (["--estimate-memory", "--model", cfg, "--world-size", "3"], "must be a multiple of the world size"),
             (["--estimate-memory", "--model", refused, "--world-size", "8"], "sliding-window"),
             (["--estimate-memory", "--model", cfg, "--gpu-memory-gb", "0"], "--gpu-memory-gb 0: give")]
    for args, fragment in cases:
        with pytest.raises(SystemExit) as e:
            train.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


def test_refusal_says_what_would_fit():
    e = dict(gpu=95e9, rows={r: 0 for r in memory.ROWS})
    e["rows"].update({"parameters (sharded, fp32)": 10e9, "activations": 50e9, "temporaries": 10e9})
    line = memory.why_not(e, 80, "this run")
    assert "needs an estimated 95.0 GB per GPU, and a 80 GB GPU fits 76.0 GB" in line
    assert "more GPUs (the 10.0 GB" in line and "a smaller --block-size (the 60.0 GB" in line and "\n" not in line


def test_fits_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{not json")
    cases = [(["--sizes", "5B"], "--sizes 5B: the sizes are 0.5B,"), (["--worlds", "8,x"], "--worlds 8,x: give positive"),
             (["--blocks", "0"], "--blocks 0: give positive"), (["--out", str(tmp_path / "broken.json")], "not a JSON file")]
    for args, fragment in cases:
        with pytest.raises(SystemExit) as e:
            fits.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


def test_fits_table_marks_auto_picks_and_unfinished_rows():
    # fits.py's README table from given estimates: auto's pick on each card, "does not fit" when every
    # choice was estimated, "?" while the later choices are still to estimate.
    e = lambda gpu, host=0: dict(gpu=gpu * GB, host=host * GB)
    done = {"32B 8 32768 none": e(114.5), "32B 8 32768 activations": e(93.3, 24.2),
            "32B 8 32768 optimizer": e(49.0, 66.3), "32B 8 32768 optimizer+activations": e(27.8, 89.8),
            "0.5B 1 32768 none": e(13.2), "7B 8 32768 none": e(60), "7B 8 20000 none": e(50)}
    lines = fits.markdown(done, 32768).splitlines()
    assert lines[2:] == ["| 0.5B | 1 | 13.2 / · / · / · | · / · / · | none | none | none | none |",
                         "| 7B | 8 | 60.0 / · / · / · | · / · / · | ? | ? | none | none |",
                         "| 32B | 8 | 114.5 / 93.3 / 49.0 / 27.8 | 194 / 530 / 718 | does not fit | opt+act | opt | none |"]
