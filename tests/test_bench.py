"""bench.py runs end to end: every part (decode, training step, loss memory, bf16 parity, offload) on a tiny
shape, compiled as on a GPU.

The numbers themselves are not tested (speed is measured, not asserted; see BENCHMARKS.md), but the
script must not fail when a maintainer gets a GPU for a few minutes: its code paths run here on CPU.
"""

import json
import subprocess
import sys

import torch
from conftest import ROOT

SMOKE = ["--decode-shape", "smoke", "--train-shape", "smoke", "--train-seq", "64", "--loss-seq", "256",
         "--decode-batch", "2", "--workload-shape", "smoke", "--workload", "8,2", "--compile", "--offload-shapes", "smoke",
         "--offload-seq", "64"]


def bench(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_every_part_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    r = bench(*SMOKE, "--skip", "", "--threads", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())

    engines = {(d["batch"], d["engine"]) for d in res["decode"]}
    assert engines == {(2, e) for e in ("sample.py", "sample.py --compile", "transformers generate", "matmuls alone")}
    for d in res["decode"]:
        assert d["tokens_per_s"] > 0 and 0 < d["roofline_share"] and d["vs_transformers"] > 0

    workload = {d["engine"]: d for d in res["workload"]}
    assert set(workload) == {"engine.py", "engine.py --compile", "static cache (before)", "transformers generate"}
    for d in workload.values():
        assert d["tokens_per_s"] > 0 and 0 < d["roofline_share"] and 1 <= d["batch"] <= 2 and d["kv_peak_gb"] > 0
    for name in ("engine.py", "engine.py --compile"):  # the same greedy steps, eager or compiled
        assert workload[name]["steps"] == workload["engine.py"]["steps"] < workload["static cache (before)"]["steps"]
        assert workload[name]["kv_vs_static"] < 1 and 0 < workload[name]["prefill_share"] < 1

    (train,) = res["train"]
    for impl in ("ours", "transformers"):
        assert "error" not in train[impl], train[impl]
        assert train[impl]["tokens_per_s"] > 0 and train[impl]["peak_gb"] > 0 and 0 < train[impl]["mfu"] < 1
    assert train["ours"]["speed_vs_transformers"] > 0 and train["ours"]["memory_vs_transformers"] > 0

    (loss,) = res["loss"]
    assert loss["fused"]["extra_gb"] > 0 and loss["full"]["extra_gb"] > 0

    from memory import OFFLOADS
    assert [row["offload"] for row in res["offload"]] == list(OFFLOADS)
    for row in res["offload"]:  # each choice trained (the tokens/s of the CPU rows are not a GPU's) and estimated
        assert "error" not in row and row["tokens_per_s"] > 0 and row["speed_vs_none"] > 0 and row["estimate_gb"] > 0, row
    assert res["offload"][0]["speed_vs_none"] == 1.0

    parity = res["parity"]
    assert parity["ours fp32 vs transformers fp32, max abs diff"] < 1e-4  # the same weights, the same model
    for name in ("ours", "transformers"):
        assert 0 < parity[f"{name} bf16 vs fp32, max abs diff"] < 0.5
        assert parity[f"{name} bf16 vs fp32, top-1 agreement"] > 0.9

    # The report printed at the end: one table per part, each table's rows as wide as its header.
    tables, table = [], []
    for line in r.stdout.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            tables.append(table)
            table = []
    assert [t[0].split("|")[1].strip() for t in tables] == ["batch", "shape", "T", "T", "shape", "comparison"]
    assert [len(t) - 2 for t in tables] == [4, 4, 2, 1, 4, 8]  # rows below the header and its rule
    for t in tables:
        assert len({line.count("|") for line in t}) == 1, t


def test_bad_input_is_one_line_and_exit_2():
    cases = [(["--skip", "decode,bogus"], "the parts are decode,loss,offload,parity,train,workload")]
    if not torch.cuda.is_available():  # with a GPU, --gpu is the GPU check itself
        cases.append((["--gpu"], "needs a CUDA device"))
    for args, fragment in cases:
        r = bench(*args)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.stderr
