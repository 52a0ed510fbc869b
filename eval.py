"""
Evaluate a model on AIME24, AIME25, MATH500 and GPQA Diamond the way s1 did, and compare the paper's ways of
spending test-time compute on it: budget forcing, token-, step- and class-conditional control, rejection
sampling and majority voting (methods.py has the table of what each one does).

Each problem becomes the user turn of the chat template (GPQA: the question and four shuffled choices, a
method's instruction after it), sample.py's engine writes the thinking and the answer, and grade.py grades it:

    text after the last "<|im_start|>answer"  ->  the last \\boxed{...} (several in a row: one set), else the
    "Answer:" line or the display math after it, else the last number or expression in the text
    AIME: integer comparison   MATH: math-verify equivalence   GPQA: the one letter picked (none or two = wrong)

A sweep runs every task once per setting of each method and reports per task and method the paper's three
numbers: Control, Scaling and Performance (methods.sweep_metrics).

    python eval.py --model out/s1 --tasks aime24,math500 --data-dir ../shared/data --budgets 1024,2048
    python eval.py --model simplescaling/s1.1-32B --waits 0,1,2 --batch-size 32
    python eval.py --model out/s1 --tasks aime24 --methods bf,tcc,tcc+bf,rs,majority --budgets 1024,2048,4096
    torchrun --nproc_per_node 8 eval.py --model out/s1 --budgets 1024,2048,4096   # 8 GPUs, a share each

What it writes (--out): samples.jsonl (one line per generation, with the answer it extracted and why it was
judged right or wrong; appended as samples finish, so a rerun into the same directory skips what is done),
results.json (rewritten atomically as it goes) and scaling.png (accuracy against thinking tokens, one line per
Wait count and per method; skipped with a note when matplotlib is missing).
Under torchrun every process loads the whole model on its own GPU, decodes the problems whose position is its
rank modulo the world size into samples.rank<N>.jsonl, and process 0 merges those into samples.jsonl at the
end (a rerun merges what a crashed run left).
What it leaves out: the reference's API-model judge for MATH (math-verify is a local symbolic checker), and
the search methods of the paper's discussion (REBASE).
"""

import argparse
import csv
import glob
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

import grade
import methods

# -----------------------------------------------------------------------------
# Defaults (s1's evaluation: greedy decoding, at most 32768 new tokens in all)

DEFAULTS = dict(
    tasks="aime24,aime25,math500,gpqa_diamond",
    model="out/tiny",         # sample.py's default (the README's first run); or out/s1, simplescaling/s1.1-32B
    data_dir=None,            # None: ./data/<file> when it is there, else the hub
    out="out/eval",
    methods="bf",             # see methods.py: bf, tcc, tcc+bf, scc, scc+bf, ccc, rs, majority
    max_thinking_tokens=None,  # None (no cap), an int, or "auto" (whatever the context leaves)
    wait=0,
    wait_str="Wait",
    steps="16,32,64,128,256",  # scc's N steps: the reference harness's PROMPTSTEP values
    samples=64,               # majority voting's samples per problem: the reference's agg64
    max_tries=16,             # rejection sampling's tries per problem (the reference had no cap)
    temperature=None,         # None: 0 (greedy) for bf/tcc/scc/ccc, 1 for rs and majority (the paper's)
    max_new_tokens=32768,
    batch_size=16,            # most rows decoded at once; the whole sweep queues and joins as rows end
    kv_cache_gb=None,         # None: engine.py's share of the memory left after the weights
    seed=0,
)
LOCAL_DATA_DIR = "data"
GPQA_SEED = 0  # the choice order of every GPQA question is fixed by this seed and the question's row


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
                 hint="write it with `python tiny.py` (the README's first run)"),
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
# Files: samples.jsonl is appended sample by sample; results.json and scaling.png are replaced atomically

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
    """Finished generations of earlier runs, {(task, setting, id, index): sample}; a later line replaces an
    earlier one of the same key (scc+bf's answer pass replaces its thinking pass). A last line cut off by a
    crash is dropped and the file rewritten without it, so new lines append cleanly."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    done, good = {}, []
    for line in lines:
        try:
            s = json.loads(line)
            done[(s["task"], s["setting"], s["id"], s.get("index", 0))] = s
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


def plot(results, path):
    fig = methods.figure(results)
    if fig is None:
        print(f"note: matplotlib is not installed, so {path} is not drawn (pip install matplotlib)")
        return
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


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
    try:
        settings = methods.sweep(args)
    except methods.BadSweep as e:
        raise BadInput(str(e)) from None
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.max_new_tokens < 1:
        raise BadInput("--batch-size, --limit and --max-new-tokens must be at least 1")
    if args.kv_cache_gb is not None and not args.kv_cache_gb > 0:
        raise BadInput(f"--kv-cache-gb {args.kv_cache_gb}: give a size in GB above 0, or leave it out")
    names = [t.strip() for t in args.tasks.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise BadInput(f"--tasks {args.tasks!r}: give distinct comma-separated task names")
    tasks = {}  # every task is loaded before the model, so a missing file fails in seconds, not hours
    for name in names:
        rows, grader = load_task(name, args.data_dir)
        if len({r["id"] for r in rows}) != len(rows):
            raise BadInput(f"{name}: two rows share an id; samples.jsonl is keyed by it, so give each row its own")
        tasks[name] = (rows[:args.limit] if args.limit else rows, grader)

    config = {k: getattr(args, k) for k in ("model", "tasks", "data_dir", "methods", "max_new_tokens", "wait_str",
                                            "temperature", "seed", "limit", "dtype", "max_tries")}
    check_out_dir(args.out, config)
    samples_path, results_path = os.path.join(args.out, "samples.jsonl"), os.path.join(args.out, "results.json")
    rank, world = processes()
    if rank == 0:
        merge_shares(samples_path)  # the shares of an earlier torchrun run, if any, count as done
    barrier(world)
    done = read_samples(samples_path)
    n_todo = len(methods.pending(tasks, settings, done, args.max_tries))
    if rank == 0:
        more = " (and rejection sampling's next tries)" if any(s["method"] == "rs" for s in settings) else ""
        print(f"{len(tasks)} task(s) x {len(settings)} setting(s): {n_todo} samples to generate"
              f"{f' by {world} processes' if world > 1 else ''}{more}, "
              f"{sum(not x.get('stage') for x in done.values())} already in {samples_path}")

    def save(complete):
        os.makedirs(args.out, exist_ok=True)
        results = methods.summarize(tasks, settings, done, args.max_tries)
        payload = dict(config=config, settings=[s["key"] for s in settings], complete=complete,
                       updated=time.strftime("%Y-%m-%d %H:%M:%S"), tasks=results)
        write_text(results_path, json.dumps(payload, indent=2) + "\n")
        return results

    if n_todo:
        path = share_path(samples_path, rank) if world > 1 else samples_path
        generate_all(args, tasks, settings, done, path, save if rank == 0 else None, rank, world)
    if world > 1:
        barrier(world)  # every share written
        if rank != 0:
            return None
        done.update(merge_shares(samples_path))
    results = save(complete=True)
    methods.print_table(results)
    plot(results, os.path.join(args.out, "scaling.png"))
    print(f"wrote {results_path}, {samples_path}")
    for name, per_method in results.items():  # a budget that no try met: the sweep measured nothing there
        for key, p in per_method.get("rs", {}).get("settings", {}).items():
            if p["n"] and p["capped"] == p["n"]:
                raise BadInput(f"{name} {key}: no sample ended its thinking within the budget in --max-tries "
                               f"{args.max_tries} tries; raise the budget or --max-tries (samples are kept)")
    return results


def generate_all(args, tasks, settings, done, samples_path, save, rank=0, world=1):
    """Generate and grade every pending sample of this process (the problems at positions rank, rank + world,
    ...), round after round, appending each to samples_path as it finishes. A round is every sample whose
    inputs are known: rejection sampling's next try and scc+bf's answer pass wait for the round before.
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
        for n_round in itertools.count(1):
            jobs = methods.pending(tasks, settings, done, args.max_tries)
            jobs = [j for j in jobs if j["position"] % world == rank]  # this process's problems, every round
            if not jobs:
                break
            requests = [methods.request(j, lambda q: sample.build_prompt(tokenizer, q), args) for j in jobs]
            bar = tqdm(total=len(jobs), desc=f"round {n_round}", unit="sample", dynamic_ncols=True,
                       disable=rank != 0)  # under torchrun: process 0's share
            t0, finished, right, new_tokens, saved = time.time(), 0, 0, 0, time.time()

            def on_finish(i, gen):
                nonlocal finished, right, new_tokens, saved
                job = jobs[i]
                line = methods.finish(job, requests[i], gen, tokenizer)
                line.update(gold=job["row"]["gold"], **grade.check(line["response"], job["row"]["gold"],
                                                                   tasks[job["task"]][1]))
                done[(line["task"], line["setting"], line["id"], line["index"])] = line
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())  # on the disk before the next one: a crash loses at most what is decoding
                finished, right, new_tokens = finished + 1, right + line["correct"], new_tokens + len(gen.token_ids)
                bar.update(1)
                bar.set_postfix(acc=f"{100.0 * right / finished:.1f}%", tok_s=f"{new_tokens / (time.time() - t0):.0f}")
                if time.time() - saved > 60:  # results.json follows a long round once a minute
                    save(complete=False)
                    saved = time.time()

            try:
                generate_requests(model, tokenizer, requests, on_finish, args)
            except sample.InputError as e:
                raise BadInput(str(e)) from None
            except torch.OutOfMemoryError:
                raise BadInput(f"out of memory with --batch-size {args.batch_size}; lower it or --kv-cache-gb "
                               "(finished samples are kept)") from None
            bar.close()
            save(complete=False)


def generate_requests(model, tokenizer, requests, on_finish, args):
    """
    Generate every request ({"prompt": the exact text to continue, "max_new_tokens", "max_thinking_tokens",
    "wait", "temperature", "seed"}) and call on_finish(i, generation) as request i finishes. The only place
    that calls sample.generate: the whole sweep goes to one engine, whose rows each keep their own settings
    and random generator (a sample does not depend on what it is batched with), --batch-size of them
    decoding at once and a waiting request joining as soon as a row ends.
    """
    import sample
    sample.generate(model, tokenizer, requests, raw=True, wait_str=args.wait_str, compile=args.compile,
                    batch_size=args.batch_size, kv_cache_gb=args.kv_cache_gb, on_finish=on_finish)


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
    p.add_argument("--methods", help=f"comma-separated, see methods.py: {', '.join(methods.NAMES)} "
                   "(default %(default)s)")
    p.add_argument("--max-thinking-tokens", help="thinking budget: an int, auto or none (default: none)")
    p.add_argument("--wait", help="how many times to replace the end of thinking by --wait-str "
                   "(default %(default)s)")
    p.add_argument("--wait-str", help="default %(default)s")
    p.add_argument("--budgets", help="sweep: comma-separated budgets, e.g. 512,1024,2048,4096,8192 (bf, tcc, rs)")
    p.add_argument("--waits", help="sweep: comma-separated wait counts, e.g. 0,1,2,4 (bf)")
    p.add_argument("--steps", help="sweep: comma-separated step counts for scc (default %(default)s)")
    p.add_argument("--samples", type=int, help="majority voting's samples per problem; the curve runs over "
                   "k = 1, 2, 4, ... up to it (default %(default)s)")
    p.add_argument("--max-tries", type=int, help="rejection sampling's tries per problem before it counts as "
                   "wrong (default %(default)s)")
    p.add_argument("--temperature", type=float, help="default: 0 (greedy) for bf, tcc, scc and ccc; 1 for rs and "
                   "majority")
    p.add_argument("--max-new-tokens", type=int, help="default %(default)s")
    p.add_argument("--batch-size", type=int, help="most samples decoded at once (default %(default)s)")
    p.add_argument("--kv-cache-gb", type=float, help="memory of the paged KV cache (default: most of what the "
                   "weights leave)")
    p.add_argument("--limit", type=int, help="only the first N problems of each task")
    p.add_argument("--seed", type=int, help="sampling seed: each sample's own is drawn from it (default %(default)s)")
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
