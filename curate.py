"""
Make your own s1K: choose ~1,000 hard and diverse questions from a large pool, as s1 did (59K -> 1K), with
local open models only, run by this project's own engine and graded by its own grader.

s1's procedure (its repo: data/bulk_inference.py, data/featurization.py, data/filter.ipynb) as stages that
each run alone. The model stages cache every finished batch under --work (distill.py's caches, one file per
model, keyed by question), so a crash or a new difficulty model reruns only what is missing:

    quality    drop incomplete rows and questions with figure or formatting artefacts     (no model, seconds)
    attempts   one answer per question from a difficulty model, graded against the reference
    judge      optional: a local judge for the references that cannot be graded symbolically
    domains    one Mathematics Subject Classification code per question, decoding constrained to the codes
    select     drop what a difficulty model solved, keep the benchmark-like questions the teacher got right,
               draw the rest domain by domain, longer traces likelier; writes the set and a report

    python curate.py attempts --pool pool.jsonl --model Qwen/Qwen2.5-7B-Instruct
    python curate.py attempts --pool pool.jsonl --model Qwen/Qwen2.5-32B-Instruct
    python curate.py domains  --pool pool.jsonl
    python curate.py select   --pool pool.jsonl --out data/my_s1k.jsonl
    python distill.py --questions data/my_s1k.jsonl --out data/my_s1k_r1.jsonl     # s1.1: new traces

A pool has s1's columns: question, solution (reference answer or solution text), and for selection the
teacher's trace and attempt (thinking_trajectories + attempt, or s1K-1.1's deepseek_* pair); source_type
and domain when it has them. A pool without traces gets them from distill.py first.
What it leaves out: collecting the pool (s1's data/collect_data.py) and decontaminating it against the
benchmarks. The judge and the domain classifier answer in one constrained step where s1's API model
reasoned first.
"""

import argparse
import json
import os
import random
import re
import statistics
from collections import Counter

import sample
from data import ANSWER_FOR_THINKING, THINKING_COLUMNS, load_rows
from distill import (CurateError, add_model_args, choose_cached, empty, fail, generate_cached, grade, qhash,
                     read_cache, reference, run, slug, write_jsonl, write_text)

# -----------------------------------------------------------------------------
# Defaults, spelled out once (s1's)

DIFFICULTY_MODELS = "Qwen/Qwen2.5-7B-Instruct,Qwen/Qwen2.5-32B-Instruct"
ATTEMPT_TEMPERATURE, ATTEMPT_MAX_NEW = 0.05, 32768  # data/bulk_inference.py's SamplingParams
CLASSIFIER = "Qwen/Qwen2.5-7B-Instruct"  # s1: Claude 3.5 Sonnet
JUDGE = "Qwen/Qwen2.5-32B-Instruct"  # s1: Claude 3.5 Sonnet
DOMAINS_FILE = "../shared/data/msc/msc2020_top_level.json"  # the 61 top-level MSC2020 codes (s1's data/msc.json)
TOKENIZER = "Qwen/Qwen2.5-32B-Instruct"  # counts thinking tokens, as featurization.py's upload_length
N, SEED = 1000, 0
GPQA, AIME = "Idavidrein/gpqa", "qq8933/AIME_1983_2024"  # s1's source_type names
KEEP_SOURCES = f"{GPQA},{AIME}"  # kept first when the teacher got them right (filter.ipynb cell 14)
LONG_SOURCE, LONG_MIN = "openaimath", 5600  # MATH questions kept first when right and the trace is longer
REWEIGHT_AFTER = 700  # --benchmark-weighting: the notebook's switch to AIME/GPQA-like domains (cell 21)
JUDGE_ATTEMPT_CHARS = 4000  # the judge reads an attempt's end, where its answer is
JUDGE_SYSTEM = ("You grade a student's attempt at a problem against the correct answer. If the correct answer is "
                "a number, an expression or a choice, the attempt must reach the same one. If it is a proof or an "
                "explanation, the attempt's reasoning must be correct. Reply with Yes or No only.")
CLASSIFY_SYSTEM = ("You classify questions by subject. Each subject below has a code. Reply with the code of the "
                   "one subject the question belongs to; if it touches several, the most relevant one.\n\n")

# -----------------------------------------------------------------------------
# The pool and s1's quality filters


def load_pool(source: str) -> tuple[list[dict], dict]:
    """The rows of a pool and which of its columns hold the trace, the teacher's attempt and the domain."""
    rows = load_rows(source)
    missing = [c for c in ("question", "solution") if c not in rows.column_names]
    if missing:
        raise CurateError(f"{source}: no column {' or '.join(map(repr, missing))} (it has "
                          f"{', '.join(rows.column_names)}); a pool needs question and solution")
    thinking = next((c for c in THINKING_COLUMNS if c in rows.column_names), None)
    if ANSWER_FOR_THINKING.get(thinking) not in rows.column_names:
        thinking = None
    return list(rows), dict(thinking=thinking, attempt=ANSWER_FOR_THINKING.get(thinking),
                            domain="domain" if "domain" in rows.column_names else None)


# filter.ipynb cell 7: `any(f"p{i}." in question for i in range(1, 1000))` is this regex (i has no leading
# zero), and the bold pattern is the notebook's own: its lookahead wants a digit anywhere later on the
# line, not inside the bold span, so "**Note** ... 5" is dropped too. Both kept exactly.
NUMBERING = re.compile(r"p[1-9]\d{0,2}\.")
BOLD_DIGIT = re.compile(r"\*\*(?=.*\d)[^\s\]]*\*\*")


def quality_drop(row: dict, cols: dict) -> str | None:
    """Why s1's filters drop a row, or None when it stays."""
    # Cell 4 drops a row with any missing field (there the featurized ones: grades, domain, trace length;
    # here the pool's own, as the rest is computed for every row that stays).
    for field in ("question", "solution", cols["thinking"], cols["attempt"], cols["domain"]):
        if field is not None and empty(row.get(field)):
            return f"missing {field}"
    q = row["question"]
    if "[asy]" in q and "AIME" in (row.get("source_type") or ""):
        return None  # cell 7's `elif`: an AIME question keeps its Asymptote figure, whatever else it holds
    for rule, hit in (("[asy]", "[asy]" in q), ("![Image]", "![Image]" in q), ("p{i}.", NUMBERING.search(q)),
                      ("bold digit", BOLD_DIGIT.search(q))):
        if hit:
            return rule
    return None


def quality(rows: list[dict], cols: dict) -> tuple[list[dict], Counter]:
    """The rows that pass, each question once, and how many each rule dropped."""
    kept, drops, seen = [], Counter(), set()
    for row in rows:
        why = quality_drop(row, cols)
        if why is None and qhash(row["question"]) in seen:
            why = "duplicate question"  # s1 keyed everything by question hash, which merged them silently
        if why:
            drops[why] += 1
        else:
            seen.add(qhash(row["question"]))
            kept.append(row)
    return kept, drops


def quality_main(args):
    pool, cols = load_pool(args.pool)
    rows, drops = quality(pool, cols)
    print(f"{args.pool}: {len(pool)} rows, {len(rows)} pass s1's quality filters")
    for rule, n in drops.most_common():
        print(f"  dropped {n:7d}  {rule}")


def cache_path(args, stage: str, model: str) -> str:
    return os.path.join(args.work, stage, slug(model) + ".jsonl")


# -----------------------------------------------------------------------------
# The model stages


def attempts_main(args):
    """A difficulty model answers every question that passes quality: the chat template with its default
    system prompt and no format instruction (s1's bulk_inference.py); each answer graded as it finishes."""
    rows, _ = quality(*load_pool(args.pool))
    settings = dict(model=args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed)
    path = cache_path(args, "attempts", args.model)
    done = read_cache(path, settings)
    todo = [r for r in rows if qhash(r["question"]) not in done]
    print(f"{args.model}: {len(todo)} questions to answer, {len(rows) - len(todo)} already in {path}")
    if not todo:
        return
    model, tokenizer = sample.load_model(args.model, args.device, args.dtype)
    refs = {qhash(r["question"]): reference(r) for r in todo}

    def finish(qid, g):
        text = g.text if g else ""
        return dict(id=qid, text=text, finish=g.finish_reason if g else "prompt too long", ref=refs[qid],
                    **grade(text, refs[qid]))
    prompts = [(qhash(r["question"]), tokenizer.apply_chat_template(
        [{"role": "user", "content": r["question"]}], tokenize=False, add_generation_prompt=True)) for r in todo]
    generate_cached(model, tokenizer, prompts, path, settings, args.batch_size, finish)


def judge_main(args):
    """A local judge says Yes or No to the attempts whose reference is free text: the difficulty models'
    and the teacher's (the pool's own, for the benchmark rule). The prompt is ours, after data/grading.txt."""
    rows, cols = load_pool(args.pool)
    rows, _ = quality(rows, cols)
    free = [r for r in rows if reference(r) is None]
    todo = []
    for name in models_arg(args.models):
        attempts = read_cache(cache_path(args, "attempts", name))
        todo += [(r, f"{qhash(r['question'])}:{slug(name)}", attempts[qhash(r["question"])]["text"])
                 for r in free if qhash(r["question"]) in attempts]
    if cols["attempt"]:
        todo += [(r, f"{qhash(r['question'])}:teacher", r[cols["attempt"]]) for r in free]
    settings = dict(model=args.model, prompt=JUDGE_SYSTEM)
    path = cache_path(args, "judge", args.model)
    done = read_cache(path, settings)
    todo = [(key, [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": (
        f"## Problem\n{r['question']}\n\n## Attempt\n{text[-JUDGE_ATTEMPT_CHARS:]}\n\n## Correct answer\n"
        f"{r['solution']}")}]) for r, key, text in todo if key not in done]
    print(f"{len(free)} of {len(rows)} questions have a free-text reference; {len(todo)} attempts to judge")
    if todo:
        model, tokenizer = sample.load_model(args.model, args.device, args.dtype)
        choose_cached(model, tokenizer, todo, ["Yes", "No"], path, settings, args.batch_size, "verdict")


def read_domains(path: str) -> list[dict]:
    """The domain list: a JSON list of {code, title, descriptions} with distinct codes, as the MSC2020 file."""
    try:
        with open(path, encoding="utf-8") as f:
            domains = json.load(f)
    except FileNotFoundError:
        raise CurateError(f"--domains-file {path}: no such file; give the MSC2020 list (s1's data/msc.json, in the "
                          "team's data as msc/msc2020_top_level.json) or a list in its shape") from None
    except (OSError, ValueError) as e:
        raise CurateError(f"--domains-file {path}: cannot read it as JSON ({type(e).__name__})") from None
    if not (isinstance(domains, list) and domains and all(
            isinstance(d, dict) and isinstance(d.get("code"), str) and d["code"].strip() and
            isinstance(d.get("title"), str) and isinstance(d.get("descriptions", []), list) for d in domains)
            and len({d["code"] for d in domains}) == len(domains)):
        raise CurateError(f"--domains-file {path}: not a domain list like the MSC2020 file ({DOMAINS_FILE}): "
                          "a JSON list of {code, title, descriptions} with distinct codes")
    return domains


def domains_main(args):
    """A local instruct model gives every question that passes quality one code of the domain list; the list
    is the system prompt, so choose() reads it once per batch."""
    domains = read_domains(args.domains_file)
    subjects = [f"{d['code']} {d['title']}: {'; '.join(x.strip() for x in d.get('descriptions', []))}" for d in domains]
    system = CLASSIFY_SYSTEM + "\n".join(subjects)
    rows, _ = quality(*load_pool(args.pool))
    settings = dict(model=args.model, prompt=system)
    path = cache_path(args, "domains", args.model)
    done = read_cache(path, settings)
    todo = [(qhash(r["question"]), [{"role": "system", "content": system}, {"role": "user", "content": r["question"]}])
            for r in rows if qhash(r["question"]) not in done]
    print(f"{args.model}: {len(todo)} questions to classify, {len(rows) - len(todo)} already in {path}")
    if todo:
        model, tokenizer = sample.load_model(args.model, args.device, args.dtype)
        codes = [tokenizer.encode(d["code"], add_special_tokens=False) for d in domains]
        if any(a != b and b[:len(a)] == a for a in codes for b in codes):
            raise CurateError(f"--domains-file {args.domains_file}: one code's tokens begin another's; give codes "
                              "of one length, as the MSC's two digits")
        choose_cached(model, tokenizer, todo, [d["code"] for d in domains], path, settings, args.batch_size, "domain")


# -----------------------------------------------------------------------------
# Selection


def draw(by_domain: dict, k: int, rng: random.Random, weights: dict | None = None, after: int = 0) -> list:
    """
    s1's diversity sampling (filter.ipynb cell 21), k draws: pick a domain uniformly at random, rank its
    questions by thinking length (longest: rank 0), take one with probability proportional to 2^-rank,
    remove it (the ranks of the rest close up), and drop the domain once it is empty.
    by_domain: {domain: [(id, thinking tokens)]}; equal lengths are ranked by id. With `weights` ({domain:
    weight}), draws after the first `after` pick domains in proportion to them (the notebook's
    re-weighting), uniformly again once no weighted domain is left. Returns [(domain, rank, id)].
    """
    pools = {d: sorted(items, key=lambda t: (-t[1], t[0])) for d, items in by_domain.items() if items}
    picked = []
    while len(picked) < k and pools:
        names = sorted(pools)
        w = [weights.get(d, 0) for d in names] if weights is not None and len(picked) >= after else None
        domain = rng.choices(names, weights=w)[0] if w and sum(w) > 0 else rng.choice(names)
        items = pools[domain]
        rank = rng.choices(range(len(items)), weights=[2.0 ** -r for r in range(len(items))])[0]
        picked.append((domain, rank, items.pop(rank)[0]))
        if not items:
            del pools[domain]
    return picked


def benchmark_weights(rows: list[dict], domain_of: dict) -> dict:
    """filter.ipynb cell 17: the domains of the AIME and GPQA questions, GPQA's scaled to half of AIME's total."""
    count = {s: Counter(domain_of[qhash(r["question"])] for r in rows if r.get("source_type") == s)
             for s in (GPQA, AIME)}
    ratio = 0.5 * sum(count[AIME].values()) / max(1, sum(count[GPQA].values()))
    return {d: int(count[GPQA][d] * ratio) + count[AIME][d] for d in set(count[GPQA]) | set(count[AIME])}


def models_arg(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise CurateError("--models: give at least one difficulty model")
    return names


def unsolved(args, rows: list[dict]) -> tuple[list[dict], dict, dict]:
    """The rows no difficulty model solved (filter.ipynb cell 9), what it counted, and the judge's verdicts."""
    names = models_arg(args.models)
    attempts = {m: read_cache(cache_path(args, "attempts", m)) for m in names}
    verdicts = read_cache(cache_path(args, "judge", args.judge_model)) if args.ungradeable == "judge" else {}
    for m in names:
        missing = sum(qhash(r["question"]) not in attempts[m] for r in rows)
        if missing:
            raise CurateError(f"no attempt of {m} at {missing} questions in {args.work}: run "
                              f"`curate.py attempts --pool {args.pool} --model {m}` first")
    survivors, free, solved = [], Counter(), Counter()
    for r in rows:
        qid, ref = qhash(r["question"]), reference(r)
        if ref is None and args.ungradeable == "drop":
            free["dropped"] += 1
            continue
        right = []
        for m in names:
            a = attempts[m][qid]
            # grade again after a grader change (--regrade), or when the reference is not the one graded against
            stale = args.regrade or "correct" not in a or a.get("ref") != (list(ref) if ref else None)
            c = grade(a["text"], ref)["correct"] if stale else a["correct"]
            if c is None and args.ungradeable == "judge":
                if f"{qid}:{slug(m)}" not in verdicts:
                    raise CurateError(f"no verdict of {args.judge_model} on {m}'s attempt at {qid}: run `curate.py "
                                      f"judge --pool {args.pool} --model {args.judge_model} --models {args.models}`")
                c = verdicts[f"{qid}:{slug(m)}"]["verdict"] == "Yes"
            right.append(bool(c))
        if ref is None:  # with --ungradeable keep, no attempt at it counts as right
            free["kept as unsolved" if args.ungradeable == "keep" else
                 "judged solved" if any(right) else "judged unsolved"] += 1
        if any(right):
            solved[names[right.index(True)]] += 1
        else:
            survivors.append(r)
    return survivors, dict(models=names, first_solved_by=dict(solved), free_text_references=dict(free)), verdicts


def select_main(args):
    from transformers import AutoTokenizer

    if not args.out.endswith(".jsonl"):
        raise CurateError(f"--out {args.out}: give a .jsonl file")
    pool, cols = load_pool(args.pool)
    if cols["thinking"] is None:
        raise CurateError(f"{args.pool}: no teacher traces ({' or '.join(THINKING_COLUMNS)}, with the attempt); "
                          "selection ranks questions by their length: run distill.py on the pool first")
    rows, drops = quality(pool, cols)
    survivors, difficulty, verdicts = unsolved(args, rows)
    qids = [qhash(r["question"]) for r in survivors]

    if cols["domain"]:  # the pool's own labels
        domain_of = {q: str(r[cols["domain"]]) for q, r in zip(qids, survivors)}
    else:
        titles = {d["code"]: d["title"] for d in read_domains(args.domains_file)}
        codes = read_cache(cache_path(args, "domains", args.domain_model))
        missing = sum(q not in codes for q in qids)
        if missing:
            raise CurateError(f"no domain for {missing} questions in {args.work}: run `curate.py domains --pool "
                              f"{args.pool} --model {args.domain_model}` first (or give the pool a domain column)")
        domain_of = {q: f"{codes[q]['domain']} {titles.get(codes[q]['domain'], '')}".strip() for q in qids}

    # Thinking length: the teacher's trace in Qwen2.5 tokens (featurization.py's upload_length counted
    # thinking_trajectories[0]; s1K's Gemini traces are one-item lists, joined here as data.py joins them).
    traces = [r[cols["thinking"]] for r in survivors]
    traces = ["\n".join(t) if isinstance(t, list) else t for t in traces]
    ids = AutoTokenizer.from_pretrained(args.tokenizer)(traces, add_special_tokens=False)["input_ids"] if traces else []
    length = dict(zip(qids, map(len, ids)))

    # First, the benchmark-like questions the teacher got right (filter.ipynb cell 14).
    def teacher_right(q, r):
        ref = reference(r)
        if ref is None:
            return verdicts.get(f"{q}:teacher", {}).get("verdict") == "Yes"
        return bool(grade(r[cols["attempt"]], ref)["correct"])
    why = {}
    for q, r in zip(qids, survivors):
        source = r.get("source_type") or ""
        if any(s and s in source for s in args.keep_sources.split(",")) and teacher_right(q, r):
            why[q] = f"benchmark source {source}, teacher right"
        elif args.long_source and args.long_source in source and length[q] > args.long_min and teacher_right(q, r):
            why[q] = f"benchmark source {source}, teacher right, trace {length[q]} > {args.long_min} tokens"
    rest = [q for q in qids if q not in why]
    if len(why) > args.n:
        raise CurateError(f"{len(why)} benchmark-like questions are kept first, more than --n {args.n}; raise --n "
                          "or narrow --keep-sources")
    if len(why) + len(rest) < args.n:
        raise CurateError(f"only {len(why) + len(rest)} questions survive the filters ({len(why)} kept first, "
                          f"{len(rest)} to draw from); ask for --n {len(why) + len(rest)} or fewer, or give a "
                          "larger pool")

    # Then s1's diversity draw over the rest.
    by_domain = {}
    for q in rest:
        by_domain.setdefault(domain_of[q], []).append((q, length[q]))
    weights = benchmark_weights(survivors, domain_of) if args.benchmark_weighting else None
    picks = draw(by_domain, args.n - len(why), random.Random(args.seed), weights, REWEIGHT_AFTER - len(why))
    for domain, rank, q in picks:
        why[q] = f"diversity: domain {domain}, drawn at rank {rank} (0: the longest trace left in it)"
    chosen = [dict(r, domain=domain_of[q], thinking_tokens=length[q], kept_because=why[q])
              for q, r in zip(qids, survivors) if q in why]

    complete = len(pool) - sum(n for rule, n in drops.items() if rule.startswith("missing"))
    report = dict(stages=dict(pool=len(pool), complete=complete, quality=len(rows), difficulty=len(survivors),
                              selected=len(chosen)),
                  quality_drops=dict(drops), difficulty=difficulty,
                  selected_by=dict(benchmark=len(chosen) - len(picks), diversity=len(picks)),
                  per_source=count_by(lambda r: r.get("source_type") or "", pool=pool, quality=rows,
                                      difficulty=survivors, selected=chosen),
                  per_domain=count_by(lambda r: domain_of[qhash(r["question"])], candidates=survivors, selected=chosen),
                  thinking_tokens=dict(candidates=spread(list(length.values())),
                                       selected=spread([r["thinking_tokens"] for r in chosen])),
                  settings={k: v for k, v in vars(args).items() if k != "func"})
    write_jsonl(args.out, chosen)
    report_path = args.out[:-len(".jsonl")] + ".report.json"
    write_text(report_path, json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"wrote {args.out} ({len(chosen)} questions) and {report_path}")


def count_by(key, **stages) -> dict:
    """{key: {stage: rows with that key}}, keys in the order of the first stage."""
    counts = {name: Counter(map(key, rows)) for name, rows in stages.items()}
    first = next(iter(counts.values()))
    return {k: {name: c[k] for name, c in counts.items()} for k in sorted(first)}


def spread(v: list[int]) -> dict:
    if not v:
        return dict(n=0)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return dict(n=len(v), mean=round(statistics.fmean(v), 1), min=min(v), p25=q[0], median=q[1], p75=q[2], max=max(v))


def print_report(report: dict):
    print("stages: " + " -> ".join(f"{k} {v}" for k, v in report["stages"].items()))
    print("quality drops: " + (", ".join(f"{k} {v}" for k, v in report["quality_drops"].items()) or "none"))
    d = report["difficulty"]
    print(f"difficulty ({', '.join(d['models'])}): first solved by {d['first_solved_by'] or 'none'}; "
          f"free-text references: {d['free_text_references'] or 'none'}")
    t = report["thinking_tokens"]["selected"]
    print(f"selected: {report['selected_by']['benchmark']} benchmark-like, {report['selected_by']['diversity']} by "
          f"the diversity draw; thinking tokens median {t['median']} (p25 {t['p25']}, p75 {t['p75']}, "
          f"min {t['min']}, max {t['max']})")
    for name in ("per_source", "per_domain"):
        print(name.replace("_", " ") + ":")
        for key, counts in report[name].items():
            print(f"  {key or '(none)':<48} " + "  ".join(f"{k} {v}" for k, v in counts.items()))


# -----------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.error = fail
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, func, help, model=None, batch_size=8):
        c = sub.add_parser(name, help=help, description=help)
        c.error = fail
        c.set_defaults(func=func)
        c.add_argument("--pool", required=True, help="hub id or local .jsonl/.parquet (see the module docstring)")
        if model is not None:
            add_model_args(c, model, batch_size)
        elif name != "quality":
            c.add_argument("--work", default="out/curate", help="the model stages' caches (default %(default)s)")
        return c

    command("quality", quality_main, "count what s1's quality filters drop")
    c = command("attempts", attempts_main, "one difficulty model answers every question",
                model=DIFFICULTY_MODELS.split(",")[0])
    c.add_argument("--temperature", type=float, default=ATTEMPT_TEMPERATURE, help="default %(default)s")
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--max-new-tokens", type=int, default=ATTEMPT_MAX_NEW, help="default %(default)s")
    c.add_argument("--seed", type=int, default=SEED)
    c = command("judge", judge_main, "a local judge for free-text references", model=JUDGE, batch_size=16)
    c.add_argument("--models", default=DIFFICULTY_MODELS, help="whose attempts to judge (default %(default)s)")
    c = command("domains", domains_main, "a domain code for every question", model=CLASSIFIER, batch_size=32)
    c.add_argument("--domains-file", default=DOMAINS_FILE, help="default %(default)s")
    c = command("select", select_main, "difficulty, benchmark and diversity selection; writes the set and a report")
    c.add_argument("--out", required=True, help="the selected questions, .jsonl (report beside it)")
    c.add_argument("--n", type=int, default=N, help="how many questions (default %(default)s)")
    c.add_argument("--seed", type=int, default=SEED, help="the diversity draw's seed (default %(default)s)")
    c.add_argument("--models", default=DIFFICULTY_MODELS, help="difficulty models (default %(default)s)")
    c.add_argument("--ungradeable", default="keep", choices=["keep", "drop", "judge"], help="a question whose "
                   "reference is free text: kept as unsolved, dropped, or as the judge says (default keep)")
    c.add_argument("--judge-model", default=JUDGE, help="default %(default)s")
    c.add_argument("--domain-model", default=CLASSIFIER, help="when the pool has no domain column")
    c.add_argument("--domains-file", default=DOMAINS_FILE)
    c.add_argument("--tokenizer", default=TOKENIZER, help="counts thinking tokens (default %(default)s)")
    c.add_argument("--keep-sources", default=KEEP_SOURCES, help="source_type substrings kept first when the "
                   "teacher is right (default %(default)s)")
    c.add_argument("--long-source", default=LONG_SOURCE, help="... and this one when the trace is longer than "
                   "--long-min (default %(default)s)")
    c.add_argument("--long-min", type=int, default=LONG_MIN)
    c.add_argument("--benchmark-weighting", action="store_true", help=f"after {REWEIGHT_AFTER} questions pick domains "
                   "as AIME and GPQA questions have them (the notebook's rule, not the paper's)")
    c.add_argument("--regrade", action="store_true", help="grade the cached attempts again (after a grader change)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if getattr(args, "n", 1) < 1:
        fail(f"--n must be at least 1, not {args.n}")
    run(args.func, args)


if __name__ == "__main__":
    main()
