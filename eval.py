"""
Evaluate a model on AIME24, AIME25, MATH500 and GPQA Diamond the way s1 did, with budget-forcing sweeps.

Each problem becomes the user turn of the chat template (GPQA: the question and four shuffled choices),
sample.py's batched engine writes the thinking and the answer, and the answer is graded:

    text after the last "<|im_start|>answer"  ->  the last \\boxed{...} there, else the "Answer:" line
    AIME: integer comparison   MATH: math-verify equivalence   GPQA: the chosen letter (none = wrong)

A sweep (`--budgets 512,1024,2048` and/or `--waits 0,1,2`) runs every task once per setting and reports
the paper's three numbers per task: Control, Scaling and Performance (see `sweep_metrics`).

    python eval.py --model out/s1 --tasks aime24,math500 --data-dir ../shared/data --budgets 1024,2048
    python eval.py --model simplescaling/s1.1-32B --waits 0,1,2 --batch-size 32
    torchrun --nproc_per_node 8 eval.py --model out/s1 --budgets 1024,2048,4096   # 8 GPUs, a share each

What it writes (--out): samples.jsonl (one line per graded sample, appended as batches finish, so a
rerun into the same directory skips what is done), results.json (rewritten atomically after each task)
and scaling.png (accuracy against thinking tokens; skipped with a note when matplotlib is missing).
Under torchrun every process loads the whole model on its own GPU, decodes every N-th pending sample
into samples.rank<N>.jsonl, and process 0 merges those into samples.jsonl at the end (a rerun merges
what a crashed run left).
What it leaves out: the reference's API-model judge for MATH (math-verify is a local symbolic checker),
majority voting and rejection sampling.
"""

import argparse
import csv
import glob
import json
import math
import os
import random
import re
import statistics
import sys
import threading
import time
from functools import lru_cache
from itertools import product
from pathlib import Path

# -----------------------------------------------------------------------------
# Defaults (s1's evaluation: greedy decoding, at most 32768 new tokens in all)

DEFAULTS = dict(
    tasks="aime24,aime25,math500,gpqa_diamond",
    model="out/tiny",         # sample.py's default (the README's first run); or out/s1, simplescaling/s1.1-32B
    data_dir=None,            # None: ./data/<file> when it is there, else the hub
    out="out/eval",
    max_thinking_tokens=None,  # None (no cap), an int, or "auto" (whatever the context leaves)
    wait=0,
    wait_str="Wait",
    temperature=0.0,
    max_new_tokens=32768,
    batch_size=8,             # the KV cache holds batch x (prompt + max_new_tokens) positions per layer
    seed=0,
)
LOCAL_DATA_DIR = "data"
GPQA_SEED = 0  # the choice order of every GPQA question is fixed by this seed and the question's row
ANSWER_MARK = "<|im_start|>answer"


class BadInput(Exception):
    """Something the user can fix; main() prints the message as one line and exits with code 2."""


# -----------------------------------------------------------------------------
# Tasks: where the data lives, how a record becomes (id, problem, gold), and which grader applies.
# Adding a task is one entry here; `--tasks file.jsonl` evaluates any jsonl of problem/answer rows.

def fix_control_chars(text):
    # The AIME "nofigures" files lost the backslash of \b, \f and \t somewhere on their way through
    # JSON: "\binom" became a backspace + "inom", "\frac" a form feed + "rac", "\triangle" a TAB +
    # "riangle". Map them back (AIME problems contain no real control characters).
    return text.replace("\b", "\\b").replace("\f", "\\f").replace("\t", "\\t")


def aime_rows(records):
    # aime24: answer "025"; aime25: answer 70
    return [dict(id=str(r["id"]), problem=fix_control_chars(r["problem"]), gold=str(int(r["answer"])))
            for r in records]


def math_rows(records):
    return [dict(id=str(r.get("unique_id", i)), problem=r["problem"], gold=str(r["answer"]))
            for i, r in enumerate(records)]


def jsonl_rows(records):
    """Generic rows: `problem` (or `question`) and `answer`, optional `id`."""
    rows = []
    for i, r in enumerate(records):
        problem = r.get("problem", r.get("question"))
        if problem is None or "answer" not in r:
            raise BadInput(f"row {i} has no problem/question or no answer field; each jsonl row needs both")
        rows.append(dict(id=str(r.get("id", i)), problem=problem, gold=str(r["answer"])))
    return rows


def gpqa_rows(records):
    """Question + "\\n\\nA) ..\\nB) ..\\nC) ..\\nD) .." with the choices shuffled by a fixed seed."""
    rows = []
    for i, r in enumerate(records):
        choices = [r[k].strip() for k in ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                          "Incorrect Answer 3")]
        order = list(range(4))
        random.Random(f"gpqa-{GPQA_SEED}-{i}").shuffle(order)  # str seeds are stable across runs
        lines = [f"{'ABCD'[k]}) {choices[j]}" for k, j in enumerate(order)]
        rows.append(dict(id=str(r.get("Record ID") or i), problem=r["Question"].strip() + "\n\n" + "\n".join(lines),
                         gold="ABCD"[order.index(0)]))
    return rows


GPQA_ACCESS = ("GPQA is gated: accept its terms at https://huggingface.co/datasets/Idavidrein/gpqa and log in "
               "(huggingface-cli login), or put gpqa_diamond.csv from the GPQA release into DATA_DIR/gpqa/")

TASKS = {
    # name: hub (dataset, config, split) or None, local file under --data-dir, rows(), grader
    "aime24": dict(hub=("simplescaling/aime24_nofigures", None, "train"), local="aime24/aime24_nofigures.jsonl",
                   rows=aime_rows, grader="integer"),
    "aime25": dict(hub=("simplescaling/aime25_nofigures", None, "train"), local="aime25/aime25_nofigures.jsonl",
                   rows=aime_rows, grader="integer"),
    "math500": dict(hub=("HuggingFaceH4/MATH-500", None, "test"), local="math500/test.jsonl",
                    rows=math_rows, grader="math"),
    "gpqa_diamond": dict(hub=("Idavidrein/gpqa", "gpqa_diamond", "train"), local="gpqa/gpqa_diamond.csv",
                         rows=gpqa_rows, grader="choice", hint=GPQA_ACCESS),
    # The tiny CPU run's held-out sums (issue 6): 3-digit additions, never in the training rows.
    "tiny": dict(hub=None, local="tiny/test.jsonl", rows=jsonl_rows, grader="integer",
                 hint="write it with `python data.py tiny` (the README's first run)"),
}


def read_records(path):
    """A local .jsonl or .csv file as a list of dicts."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if path.endswith(".csv"):
                return list(csv.DictReader(f))
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise BadInput(f"{path}: cannot read it ({type(e).__name__}: {e})") from None


def load_task(name, data_dir=None):
    """The rows of one task: [{id, problem, gold}], and the grader's name."""
    if name.endswith(".jsonl"):
        if not os.path.isfile(name):
            raise BadInput(f"{name}: no such file; --tasks takes task names ({', '.join(TASKS)}) or jsonl files")
        return jsonl_rows(read_records(name)), "math"
    if name not in TASKS:
        raise BadInput(f"unknown task {name!r}; choose from {', '.join(TASKS)} or give a .jsonl file of "
                       "problem/answer rows")
    task = TASKS[name]
    where = os.path.join(data_dir or LOCAL_DATA_DIR, task["local"])
    if os.path.isfile(where):
        return task["rows"](read_records(where)), task["grader"]
    if data_dir is not None or task["hub"] is None:  # an explicit --data-dir means local files only
        hint = f"; {task['hint']}" if task.get("hint") else ""
        raise BadInput(f"{name}: no data file {where}{hint}")
    hub_id, config, split = task["hub"]
    try:
        import datasets
        records = list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as e:
        hint = task.get("hint") or f"or put the file at {LOCAL_DATA_DIR}/{task['local']} (or pass --data-dir)"
        raise BadInput(f"{name}: cannot load {hub_id} from the hub ({type(e).__name__}); {hint}") from None
    return task["rows"](records), task["grader"]


# -----------------------------------------------------------------------------
# Answer extraction and grading

def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) in text, braces balanced; None when there is none."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None  # none, or only unclosed ones (a generation cut off inside the box)


def extract_answer(response):
    """The answer text of a whole response, or None: see the module docstring."""
    i = response.rfind(ANSWER_MARK)
    section = response if i < 0 else response[i + len(ANSWER_MARK):]
    section = re.sub(r"<\|[a-z_]+\|>", "", section)  # <|im_end|>, <|endoftext|>
    boxed = last_boxed(section)
    if boxed is not None:
        return boxed.strip() or None
    marks = list(re.finditer(r"answer\s*:", section, re.IGNORECASE))  # also matches "Final Answer:"
    if not marks:
        return None
    lines = [ln.strip() for ln in section[marks[-1].end():].splitlines() if ln.strip()]
    if not lines:
        return None
    return lines[0].rstrip(".").strip() or None


def _timeout():
    # math-verify interrupts slow sympy work with signal.alarm, which only works in the main thread;
    # elsewhere it would raise, so there we run without a timeout.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(gold):
    from math_verify import parse
    return parse(f"${gold}$", parsing_timeout=_timeout())


def math_equal(extracted, gold):
    """math-verify: both sides parsed to sympy, then compared as numbers, expressions, sets, intervals..."""
    from math_verify import parse, verify
    # plain text is wrapped in $..$ so it is read as LaTeX ("3, 5, 7" a set, "(3,4]" an interval)
    text = extracted if re.search(r"(?<!\\)\$|\\\(|\\\[", extracted) else f"${extracted}$"
    return verify(_parse_gold(gold), parse(text, parsing_timeout=_timeout()), timeout_seconds=_timeout())


def integer_equal(extracted, gold):
    """AIME: the answer as an integer ("025", "$25$", "25.", "\\text{25}"), else its math-verify value."""
    plain = re.sub(r"\\text\{([^{}]*)\}|[$\s,]|\\!|\\,", r"\1", extracted).rstrip(".")
    if re.fullmatch(r"[+-]?\d+", plain):
        return int(plain) == int(gold)
    return math_equal(extracted, str(int(gold)))


def choice_letter(extracted):
    """The A-D letter an answer picks: the whole answer, then "(B)" / "B)", then any lone capital A-D."""
    text = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", extracted)
    text = re.sub(r"[$*]", "", text).strip()
    for pattern in (r"^\(?([A-D])\)?[.:]?$", r"\(([A-D])\)", r"(?<![A-Za-z])([A-D])\)",
                    r"(?<![A-Za-z])([A-D])(?![A-Za-z])"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


GRADERS = {"integer": integer_equal, "math": math_equal,
           "choice": lambda letter, gold: letter == gold.strip().upper()}


def check_answer(response, gold, grader):
    """(the answer extracted from a whole response, is it right). GPQA's answer is the letter it picks: an
    answer without one counts as no answer, and as wrong (the reference took it for "A")."""
    extracted = extract_answer(response)
    if grader == "choice" and extracted is not None:
        extracted = choice_letter(extracted)
    return extracted, extracted is not None and GRADERS[grader](extracted, str(gold))


def grade(response: str, gold: str, task: str) -> bool:
    """Is a whole model response correct? task: a task name (aime24, math500, ...) or a grader name."""
    grader = TASKS[task]["grader"] if task in TASKS else task
    if grader not in GRADERS:
        raise ValueError(f"unknown task or grader {task!r}; choose from {', '.join([*TASKS, *GRADERS])}")
    return check_answer(response, gold, grader)[1]


# -----------------------------------------------------------------------------
# Metrics

def setting_stats(samples, budget):
    """Accuracy (%) and thinking-token statistics of one task under one setting."""
    n = len(samples)
    thinking = [s["thinking_tokens"] for s in samples]
    return dict(n=n, correct=sum(s["correct"] for s in samples),
                accuracy=100.0 * sum(s["correct"] for s in samples) / n if n else None,
                thinking_tokens_mean=statistics.fmean(thinking) if n else None,
                thinking_tokens_median=statistics.median(thinking) if n else None,
                hit_budget=sum(s["forced_answer"] for s in samples),
                no_answer=sum(s["extracted"] is None for s in samples),
                waits_mean=statistics.fmean(s["waits"] for s in samples) if n else None,
                within_budget=sum(not isinstance(budget, int) or s["thinking_tokens"] <= budget for s in samples))


def sweep_metrics(points):
    """
    The paper's three numbers over a sweep. points: one dict per setting with `accuracy` (%),
    `thinking_tokens_mean`, `n` and `within_budget` (what `setting_stats` returns).

    Control: the share (%) of runs - every generated sample of every setting - whose thinking stayed
      within its setting's budget (a setting without a numeric budget never exceeds it). Budget
      forcing caps thinking by construction, so anything under 100 means a bug; prompting for a length
      instead (the paper's token-conditional control) scores lower.
    Scaling: the average slope of accuracy against average thinking tokens over all pairs of settings
      (a, b) with tokens(a) < tokens(b):  mean of (acc_b - acc_a) / (tokens_b - tokens_a), in accuracy
      points per 1,000 thinking tokens. Positive: more thinking helps. `scaling_per_doubling` is the
      same with log2(tokens) on the x axis (points per doubling), matching the paper's log-scale plots.
      None with fewer than two distinct token counts.
    Performance: the best accuracy (%) in the sweep.
    """
    points = [p for p in points if p["n"]]
    if not points:
        return dict(control=None, scaling=None, scaling_per_doubling=None, performance=None)
    slopes, log_slopes = [], []
    for a, b in product(points, points):
        ta, tb = a["thinking_tokens_mean"], b["thinking_tokens_mean"]
        if ta < tb:
            slopes.append(1000.0 * (b["accuracy"] - a["accuracy"]) / (tb - ta))
            if ta > 0:
                log_slopes.append((b["accuracy"] - a["accuracy"]) / (math.log2(tb) - math.log2(ta)))
    return dict(control=100.0 * sum(p["within_budget"] for p in points) / sum(p["n"] for p in points),
                scaling=statistics.fmean(slopes) if slopes else None,
                scaling_per_doubling=statistics.fmean(log_slopes) if log_slopes else None,
                performance=max(p["accuracy"] for p in points))


# -----------------------------------------------------------------------------
# Settings of a sweep

def parse_budget(text):
    """A thinking budget: a positive int, "auto" or "none"."""
    t = str(text).strip().lower()
    if t == "none":
        return None
    if t == "auto":
        return "auto"
    if not re.fullmatch(r"\+?\d+", t) or int(t) <= 0:
        raise BadInput(f"bad thinking budget {text!r}: give a positive number of tokens, auto or none")
    return int(t)


def parse_wait(text):
    if not re.fullmatch(r"\s*\+?\d+\s*", str(text)):
        raise BadInput(f"bad wait count {text!r}: give a number >= 0")
    return int(text)


def parse_list(text, parse_one, flag, example):
    items = str(text).split(",")
    if not all(x.strip() for x in items):
        raise BadInput(f"{flag} {text!r}: an empty item; give comma-separated values such as {example}")
    return list(dict.fromkeys(parse_one(x) for x in items))  # a repeated value runs once


def setting_name(budget, wait):
    return f"budget={'none' if budget is None else budget},wait={wait}"


def sweep_settings(args):
    """One (budget, wait) per run: every budget of --budgets with every wait of --waits."""
    budgets = (parse_list(args.budgets, parse_budget, "--budgets", "512,1024,2048") if args.budgets
               else [parse_budget(args.max_thinking_tokens)])
    waits = parse_list(args.waits, parse_wait, "--waits", "0,1,2,4") if args.waits else [parse_wait(args.wait)]
    return list(product(budgets, waits))


# -----------------------------------------------------------------------------
# Files: samples.jsonl is appended batch by batch; results.json and scaling.png are replaced atomically

def atomic_write(path, write):
    """write(tmp_path) into a temporary file next to path, then rename it over path in one step."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_samples(path):
    """Finished samples of earlier runs, {(task, setting, id): sample}. A last line cut off by a crash is
    dropped and the file rewritten without it, so new lines append cleanly."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    done, good = {}, []
    for line in lines:
        try:
            s = json.loads(line)
            done[(s["task"], s["setting"], s["id"])] = s
            good.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    if len(good) != sum(1 for line in lines if line.strip()) or lines[-1] != "":
        write_text(path, "".join(line + "\n" for line in good))
    return done


def share_path(samples_path, rank):
    """Under torchrun each process appends to a file of its own: samples.rank<N>.jsonl."""
    return samples_path.replace(".jsonl", f".rank{rank}.jsonl")


def merge_shares(samples_path):
    """Fold the per-process files of a torchrun run (finished, or left by a crash) into samples.jsonl in
    one atomic write, then delete them. Returns every finished sample."""
    done = read_samples(samples_path)
    shares = sorted(glob.glob(share_path(glob.escape(samples_path), "*")))
    if shares:
        for path in shares:
            done.update(read_samples(path))
        write_text(samples_path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in done.values()))
        for path in shares:
            os.unlink(path)
    return done


RUN_KEYS = ("model", "wait_str", "temperature", "max_new_tokens", "seed")  # what makes old samples stale


def check_out_dir(out, config):
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)["config"]
    except (OSError, ValueError, KeyError):
        raise BadInput(f"{path} is unreadable; remove it or use another --out") from None
    changed = [f"{k} {old.get(k)!r} -> {config[k]!r}" for k in RUN_KEYS if old.get(k) != config[k]]
    if changed:
        raise BadInput(f"{out} holds samples of a different run ({'; '.join(changed)}); use another --out "
                       "or delete that directory")


def summarize(tasks, settings, done):
    results = {}
    for name, (rows, _) in tasks.items():
        per = {}
        for budget, wait in settings:
            key = setting_name(budget, wait)
            samples = [done[(name, key, r["id"])] for r in rows if (name, key, r["id"]) in done]
            per[key] = dict(budget=budget, wait=wait, **setting_stats(samples, budget))
        results[name] = dict(**sweep_metrics(list(per.values())), settings=per)
    return results


def plot(results, path):
    """Accuracy against average thinking tokens, one panel per task (the paper's Figure 1)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed, so {path} is not drawn (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        labels = {}  # settings that land on the same point share one label
        for k, p in r["settings"].items():
            if p["n"]:
                labels.setdefault((p["thinking_tokens_mean"], p["accuracy"]), []).append(k)
        pts = sorted(labels)
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-")
        for (x, y), ks in labels.items():
            ax.annotate("\n".join(ks), (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
        if pts and min(p[0] for p in pts) > 0:
            ax.set_xscale("log", base=2)
        ax.set(title=name, xlabel="average thinking tokens", ylabel="accuracy (%)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def print_table(results):
    w = max(12, *map(len, results))
    print(f"{'task':<{w}} {'setting':<22} {'acc%':>6} {'n':>5} {'think mean':>10} {'median':>7} {'hit cap':>7} "
          f"{'no ans':>6}")
    for name, r in results.items():
        for key, p in r["settings"].items():
            if p["n"]:
                print(f"{name:<{w}} {key:<22} {p['accuracy']:6.1f} {p['n']:5d} {p['thinking_tokens_mean']:10.1f} "
                      f"{p['thinking_tokens_median']:7.0f} {p['hit_budget']:7d} {p['no_answer']:6d}")
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{name:<{w}} Control {fmt(r['control'])}%  Scaling {fmt(r['scaling'])} per 1k tokens "
              f"({fmt(r['scaling_per_doubling'])} per doubling)  Performance {fmt(r['performance'])}%")


# -----------------------------------------------------------------------------
# Several GPUs: under torchrun every process holds the whole model and decodes its share of the samples

def processes():
    """(rank, world size): torchrun's, else (0, 1). The process group only serves barriers."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    from datetime import timedelta

    import torch.distributed as dist
    if not dist.is_initialized():
        # gloo: the barriers carry no tensors. A long timeout: one share can take hours longer than another.
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    return dist.get_rank(), world


def barrier(world):
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def end_processes():
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


# -----------------------------------------------------------------------------
# The evaluation loop

def evaluate(args):
    settings = sweep_settings(args)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.max_new_tokens < 1:
        raise BadInput("--batch-size, --limit and --max-new-tokens must be at least 1")
    names = [t.strip() for t in args.tasks.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise BadInput(f"--tasks {args.tasks!r}: give distinct comma-separated task names")
    tasks = {}  # every task is loaded before the model, so a missing file fails in seconds, not hours
    for name in names:
        rows, grader = load_task(name, args.data_dir)
        if len({r["id"] for r in rows}) != len(rows):
            raise BadInput(f"{name}: two rows share an id; samples.jsonl is keyed by it, so give each row its own")
        tasks[name] = (rows[:args.limit] if args.limit else rows, grader)

    config = {k: getattr(args, k) for k in ("model", "tasks", "data_dir", "max_new_tokens", "wait_str",
                                            "temperature", "seed", "batch_size", "limit", "dtype")}
    check_out_dir(args.out, config)
    samples_path, results_path = os.path.join(args.out, "samples.jsonl"), os.path.join(args.out, "results.json")
    rank, world = processes()
    if rank == 0:
        merge_shares(samples_path)  # the shares of an earlier torchrun run, if any, count as done
    barrier(world)
    done = read_samples(samples_path)
    todo = {(name, s): [r for r in rows if (name, setting_name(*s), r["id"]) not in done]
            for s in settings for name, (rows, _) in tasks.items()}
    n_todo = sum(map(len, todo.values()))
    if rank == 0:
        print(f"{len(tasks)} task(s) x {len(settings)} setting(s): {n_todo} samples to generate"
              f"{f' by {world} processes' if world > 1 else ''}, "
              f"{sum(len(rows) for rows, _ in tasks.values()) * len(settings) - n_todo} already in {samples_path}")

    def save(complete):
        os.makedirs(args.out, exist_ok=True)
        results = summarize(tasks, settings, done)
        payload = dict(config=config, settings=[setting_name(*s) for s in settings], complete=complete,
                       updated=time.strftime("%Y-%m-%d %H:%M:%S"), tasks=results)
        write_text(results_path, json.dumps(payload, indent=2) + "\n")
        return results

    if n_todo:  # under torchrun: every world-th pending sample of each setting, into a file of its own
        mine = {k: pending[rank::world] for k, pending in todo.items()}
        path = share_path(samples_path, rank) if world > 1 else samples_path
        generate_all(args, tasks, mine, done, path, save if rank == 0 else None, rank)
    if world > 1:
        barrier(world)  # every share written
        if rank != 0:
            return None
        done.update(merge_shares(samples_path))
    results = save(complete=True)
    print_table(results)
    plot(results, os.path.join(args.out, "scaling.png"))
    print(f"wrote {results_path}, {samples_path}")
    return results


def generate_all(args, tasks, todo, done, samples_path, save, rank=0):
    """Generate and grade every pending sample, appending each batch to samples_path as it finishes.
    save: rewrites results.json (None: another process does)."""
    import torch
    from tqdm import tqdm

    import sample
    device = args.device
    if "WORLD_SIZE" in os.environ and device in (None, "cuda") and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"  # one GPU per process
    try:  # a bad --model fails here, before anything is written
        model, tokenizer = sample.load_model(args.model, device=device, dtype=args.dtype)
    except (ValueError, OSError) as e:  # a CheckpointError or an unavailable --device are ValueErrors
        raise BadInput(f"--model {args.model}: {e}") from None
    os.makedirs(args.out, exist_ok=True)  # by every process, before its first write
    save = save or (lambda complete: None)  # under torchrun only process 0 writes results.json
    save(complete=False)  # results.json before any sample: a rerun into this --out checks its config
    with open(samples_path, "a", encoding="utf-8") as out:
        for (name, (budget, wait)), pending in todo.items():
            if not pending:
                continue
            rows, grader = tasks[name]
            key = setting_name(budget, wait)
            finished = [done[(name, key, r["id"])] for r in rows if (name, key, r["id"]) in done]
            bar = tqdm(total=len(finished) + len(pending), initial=len(finished), desc=f"{name} {key}",
                       unit="sample", dynamic_ncols=True, disable=rank != 0)  # under torchrun: process 0's share
            t0, new_tokens = time.time(), 0
            for i in range(0, len(pending), args.batch_size):
                batch = pending[i:i + args.batch_size]
                try:
                    gens = sample.generate(
                        model, tokenizer, [r["problem"] for r in batch], max_new_tokens=args.max_new_tokens,
                        max_thinking_tokens=budget, wait=wait, wait_str=args.wait_str,
                        temperature=args.temperature, seed=args.seed, compile=args.compile)
                except sample.InputError as e:
                    raise BadInput(f"{name}: {e}") from None
                except torch.OutOfMemoryError:
                    raise BadInput(f"out of memory with --batch-size {args.batch_size}; lower it or "
                                   "--max-new-tokens (finished samples are kept)") from None
                graded = [grade_generation(name, key, budget, wait, r, g, grader) for r, g in zip(batch, gens)]
                done.update({(name, key, s["id"]): s for s in graded})
                finished += graded
                new_tokens += sum(s["new_tokens"] for s in graded)
                # one write per batch, then onto the disk
                out.write("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in graded))
                out.flush()
                os.fsync(out.fileno())
                bar.update(len(batch))
                bar.set_postfix(acc=f"{100.0 * sum(s['correct'] for s in finished) / len(finished):.1f}%",
                                tok_s=f"{new_tokens / (time.time() - t0):.0f}")
            bar.close()
            save(complete=False)


def grade_generation(task, key, budget, wait, row, gen, grader):
    """One line of samples.jsonl."""
    extracted, correct = check_answer(gen.text, row["gold"], grader)
    return dict(task=task, setting=key, id=row["id"], budget=budget, wait=wait, prompt=gen.prompt,
                response=gen.text, extracted=extracted, gold=row["gold"], correct=correct,
                thinking_tokens=gen.thinking_tokens, waits=gen.waits, forced_answer=gen.forced_answer,
                finish_reason=gen.finish_reason, new_tokens=len(gen.token_ids))


# -----------------------------------------------------------------------------
# Command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.error = die  # one line, exit code 2 (argparse would add the usage)
    p.set_defaults(**DEFAULTS)  # the flags below take their defaults from DEFAULTS
    p.add_argument("--tasks", help=f"comma-separated: {', '.join(TASKS)}, or a jsonl file of problem/answer rows "
                   "(default %(default)s)")
    p.add_argument("--model", help="checkpoint directory or hub id (default %(default)s)")
    p.add_argument("--data-dir", help="local data files, laid out as ../shared/data "
                   f"(default: ./{LOCAL_DATA_DIR}/ when the file is there, else the hub)")
    p.add_argument("--out", help="output directory; a rerun skips finished samples (default %(default)s)")
    p.add_argument("--max-thinking-tokens", help="thinking budget: an int, auto or none (default: none)")
    p.add_argument("--wait", help="how many times to replace the end of thinking by --wait-str "
                   "(default %(default)s)")
    p.add_argument("--wait-str", help="default %(default)s")
    p.add_argument("--budgets", help="sweep: comma-separated budgets, e.g. 512,1024,2048,4096,8192")
    p.add_argument("--waits", help="sweep: comma-separated wait counts, e.g. 0,1,2,4")
    p.add_argument("--temperature", type=float, help="0 = greedy (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, help="default %(default)s")
    p.add_argument("--batch-size", type=int, help="default %(default)s")
    p.add_argument("--limit", type=int, help="only the first N problems of each task")
    p.add_argument("--seed", type=int, help="sampling seed when temperature > 0")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="default: bfloat16 on a GPU that has it, else float32")
    p.add_argument("--compile", action="store_true", help="compile the decode step (GPU)")
    return p.parse_args(argv)


def die(message):
    print(f"eval.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = parse_args(argv)
    try:
        evaluate(args)
    except BadInput as e:
        die(str(e))
    finally:
        end_processes()


if __name__ == "__main__":
    main()
