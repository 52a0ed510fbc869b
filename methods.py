"""
The paper's ways of spending test-time compute (s1, Section 3.2, Table 3 and Figure 4) as sweeps of eval.py:
what each one asks the model, how its thinking is ended, how its samples become the points of an
accuracy-against-thinking-tokens curve with the paper's Control, Scaling and Performance, and how they read:
the table eval.py prints and the picture it draws (scaling.png).

| --methods | one point per    | the question ends with (*)  | thinking ends                       | per problem      |
|-----------|------------------|-----------------------------|-------------------------------------|------------------|
| bf        | budget x Waits   | -                           | at the budget, after --waits Waits  | 1 sample         |
| tcc       | --budgets N      | "Think for up to N tokens." | when the model ends it              | 1 sample         |
| tcc+bf    | --budgets N      | "Think for up to N tokens." | at N tokens                         | 1 sample         |
| scc       | --steps N        | "Think for up to N steps."  | when the model ends it              | 1 sample         |
| scc+bf    | --steps N        | "Think for up to N steps."  | after N steps (**)                  | 1 sample         |
| ccc       | short, long      | a generic short/long prompt | when the model ends it              | 1 sample         |
| rs        | --budgets N      | -                           | by the model; a try past N tokens   | 1 kept of up to  |
|           |                  |                             | is drawn again                      | --max-tries      |
| majority  | k = 1, 2, 4, ... | -                           | --max-thinking-tokens, --wait       | --samples; the   |
|           |                  |                             |                                     | first k vote     |

(*) The reference harness's prompts, word for word (simplescaling/s1, eval/lm-evaluation-harness/lm_eval/tasks/
    */utils.py: PROMPTTOKEN, PROMPTSTEP, PROMPTSHORT, PROMPTLONG), appended after a blank line. The paper
    fine-tuned separate models for tcc and scc (simplescaling/token-conditional-control, step-conditional-
    control); any model can be asked, and Control measures how well it obeys.
(**) A step is a non-empty line of the thinking. The reference's step-conditional model wrote
    "<|im_start|>K steps left" before each step and forcing stopped it at "<|im_start|>0"; sample.py ends
    thinking at any <|im_start|>, so here the thinking is generated in full, cut after its N-th step, and
    the answer forced after the cut (a second generation from the cut text, as budget forcing would).

bf, tcc, scc and ccc decode greedily (the paper); rs and majority sample at --temperature (default 1, the
paper's), each sample with its own seed drawn from (--seed, task, problem, method, sample or try number), so
a rerun draws the same samples whatever the batching and wherever a crash cut the run. Every method starts
the thinking block (the prompt ends in "<|im_start|>think"); the reference's majority voting with
Qwen2.5-32B-Instruct decoded it as a plain chat instead.
What it leaves out: REBASE and the other search methods of the paper's discussion section.
"""

import hashlib
import math
import re
import statistics
from itertools import product

import grade

TOKENS_PROMPT = "\n\nThink for up to {n} tokens."
STEPS_PROMPT = "\n\nThink for up to {n} steps."
SHORT_PROMPT = "\n\nAnswer after a short amount of thinking. Do not spend excessive time double-checking your work."
LONG_PROMPT = ("\n\nAnswer after a long amount of thinking. If you feel like you are finished early, spend the extra "
               "time trying to double-check your work until you are absolutely sure that you have the correct answer.")
FORCED_ANSWER = "<|im_start|>answer\nFinal Answer:"  # what budget forcing appends when it ends the thinking

NAMES = {"bf": "budget forcing", "tcc": "token-conditional", "tcc+bf": "token-conditional + forcing",
         "scc": "step-conditional", "scc+bf": "step-conditional + forcing", "ccc": "class-conditional",
         "rs": "rejection sampling", "majority": "majority voting"}
SAMPLED = ("rs", "majority")  # the methods that draw samples at a temperature


class BadSweep(ValueError):
    """A sweep that cannot run; eval.py reports it as bad input."""


# -----------------------------------------------------------------------------
# Settings of a sweep: from eval.py's flags to one dict per setting

def parse_budget(text):
    """A thinking budget: a positive int, "auto" or "none"."""
    t = str(text).strip().lower()
    if t == "none":
        return None
    if t == "auto":
        return "auto"
    if not re.fullmatch(r"\+?\d+", t) or int(t) <= 0:
        raise BadSweep(f"bad thinking budget {text!r}: give a positive number of tokens, auto or none")
    return int(t)


def parse_count(text, what, least=0):
    if not re.fullmatch(r"\s*\+?\d+\s*", str(text)) or int(text) < least:
        raise BadSweep(f"bad {what} {text!r}: give a number >= {least}")
    return int(text)


def parse_list(text, parse_one, flag, example):
    items = str(text).split(",")
    if not all(x.strip() for x in items):
        raise BadSweep(f"{flag} {text!r}: an empty item; give comma-separated values such as {example}")
    return list(dict.fromkeys(parse_one(x) for x in items))  # a repeated value runs once


def sweep(args):
    """Every setting of the --methods eval.py was given, in the table's order (see settings_of)."""
    budgets = (parse_list(args.budgets, parse_budget, "--budgets", "512,1024,2048") if args.budgets
               else [parse_budget(args.max_thinking_tokens)])
    waits = (parse_list(args.waits, lambda x: parse_count(x, "wait count"), "--waits", "0,1,2,4") if args.waits
             else [parse_count(args.wait, "wait count")])
    steps = parse_list(args.steps, lambda x: parse_count(x, "step count", 1), "--steps", "16,32,64")
    names = parse_list(args.methods, str.strip, "--methods", "bf,tcc,rs")
    parse_count(args.samples, "--samples (majority voting's k samples per problem)", least=1)
    parse_count(args.max_tries, "--max-tries", least=1)
    if args.temperature is not None and not args.temperature >= 0:
        raise BadSweep(f"--temperature {args.temperature}: give 0 (greedy) or more")
    if args.temperature == 0 and set(names) & set(SAMPLED):
        raise BadSweep("--temperature 0 with rejection sampling or majority voting: greedy decoding draws the same "
                       "sample every time, so a rejected try would only come back and k votes would be one; "
                       "leave --temperature out (they sample at 1, as the paper) or give one > 0")
    return settings_of(names, budgets, waits, steps, parse_budget(args.max_thinking_tokens),
                       parse_count(args.wait, "wait count"), args.samples)


def setting(method, key, n=None, suffix="", budget=None, wait=0, steps=None, samples=1, bound=None, unit="tokens"):
    """One point of a sweep. n: the number it asks for; suffix: appended to the question; budget: the
    forcing cap in thinking tokens; steps: cut the thinking after this many steps; bound: the Control bound
    (a_max, in unit)."""
    return dict(method=method, key=key, n=n, suffix=suffix, budget=budget, wait=wait, steps=steps, samples=samples,
                bound=bound, unit=unit)


def settings_of(methods, budgets, waits, steps, budget, wait, samples):
    """Every setting of the chosen methods, in the table's order. budgets/waits/steps: the swept values;
    budget/wait: the single setting majority voting samples at."""
    numeric = [b for b in budgets if isinstance(b, int)]
    out = []
    for m in methods:
        if m in ("tcc", "tcc+bf", "rs") and not numeric:  # they use the numeric budgets of the sweep
            raise BadSweep(f"--methods {m} asks for N thinking tokens: give numeric --budgets, e.g. 1024,2048,4096")
        if m == "bf":
            out += [setting("bf", bf_key(b, w), b, budget=b, wait=w, bound=b if isinstance(b, int) else None)
                    for b, w in product(budgets, waits)]
        elif m in ("tcc", "tcc+bf"):
            out += [setting(m, f"{m}:tokens={n}", n, TOKENS_PROMPT.format(n=n), budget=n if m == "tcc+bf" else None,
                            bound=n) for n in numeric]
        elif m in ("scc", "scc+bf"):
            out += [setting(m, f"{m}:steps={n}", n, STEPS_PROMPT.format(n=n), steps=n if m == "scc+bf" else None,
                            bound=n, unit="steps") for n in steps]
        elif m == "ccc":
            out += [setting("ccc", "ccc:short", suffix=SHORT_PROMPT), setting("ccc", "ccc:long", suffix=LONG_PROMPT)]
        elif m == "rs":  # thinking may run one token past N, so that a natural end at exactly N tokens counts
            out += [setting("rs", f"rs:tokens={n}", n, budget=n + 1, bound=n) for n in numeric]
        elif m == "majority":
            out.append(setting("majority", f"majority:{bf_key(budget, wait)}", budget=budget, wait=wait,
                               samples=samples, bound=budget if isinstance(budget, int) else None))
        else:
            raise BadSweep(f"unknown method {m!r}; choose from {', '.join(NAMES)}")
    return out


def bf_key(budget, wait):
    return f"budget={'none' if budget is None else budget},wait={wait}"


def sample_seed(seed, *parts):
    """A sample's own seed from the run's seed and the sample's identity: the same in every run, whatever the
    batch it lands in (hashlib, because Python's hash() of a str changes from process to process)."""
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # < 2**63: torch.Generator.manual_seed takes it


# -----------------------------------------------------------------------------
# Steps (step-conditional control): a step is a non-empty line of the thinking

def count_steps(thinking):
    return sum(1 for line in thinking.split("\n") if line.strip())


def cut_after_steps(thinking, n):
    """The thinking up to the end of its n-th step (its newline kept), or None when it has n steps or fewer."""
    seen = 0
    for m in re.finditer(r"[^\n]*\n?", thinking):
        seen += bool(m.group().strip())
        if seen == n:
            rest = thinking[m.end():]
            return thinking[:m.end()] if rest.strip() else None
    return None


# -----------------------------------------------------------------------------
# What to generate next: every sample whose inputs are known (a round). Rejection sampling's next try, and
# step-conditional forcing's answer, are known only once the round before is done.

def pending(tasks, settings, done, max_tries):
    """Jobs: dicts (task, setting, row, position of the row in its task, index of the sample or try, prev: the
    generation a second pass continues). done: {(task, setting key, id, index): sample}."""
    jobs = []
    for s, (name, (rows, _)) in product(settings, tasks.items()):
        for pos, row in enumerate(rows):
            key = (name, s["key"], row["id"])
            if s["method"] == "rs":
                tries = [done[(*key, t)] for t in range(max_tries) if (*key, t) in done]
                if not any(t["accepted"] for t in tries) and len(tries) < max_tries:
                    jobs.append(dict(task=name, setting=s, row=row, position=pos, index=len(tries), prev=None))
                continue
            for i in range(s["samples"]):
                prev = done.get((*key, i))
                if prev is None or prev.get("stage") == "thinking":
                    jobs.append(dict(task=name, setting=s, row=row, position=pos, index=i, prev=prev))
    return jobs


def request(job, build_prompt, args):
    """The generation request of a job: the exact prompt text and the settings of its decode."""
    s = job["setting"]
    sampled = s["method"] in SAMPLED
    temperature = args.temperature if args.temperature is not None else (1.0 if sampled else 0.0)
    seed = None
    if temperature > 0:  # a sample of its own: its seed must not depend on what it is batched with
        seed = sample_seed(args.seed, job["task"], job["row"]["id"], s["key"].split(":")[0], job["index"])
    prompt = build_prompt(job["row"]["problem"] + s["suffix"])
    if job["prev"] is not None:  # scc+bf's second pass: the thinking cut after N steps, then the forced answer
        prompt += job["prev"]["cut"] + FORCED_ANSWER
    return dict(prompt=prompt, max_new_tokens=args.max_new_tokens, max_thinking_tokens=s["budget"],
                wait=s["wait"], temperature=temperature, seed=seed)


def finish(job, req, gen, tokenizer):
    """The sample line of a finished generation, before grading; stage "thinking" marks an scc+bf first pass
    whose thinking went past N steps (its answer comes from the second pass)."""
    s, prev = job["setting"], job["prev"]
    line = dict(task=job["task"], method=s["method"], setting=s["key"], id=job["row"]["id"], index=job["index"],
                seed=req["seed"], budget=s["budget"], wait=s["wait"], prompt=prev["prompt"] if prev else gen.prompt,
                response=gen.text, thinking_tokens=gen.thinking_tokens,
                steps=count_steps(gen.thinking), waits=gen.waits, forced_answer=gen.forced_answer,
                finish_reason=gen.finish_reason, new_tokens=len(gen.token_ids))
    if prev is not None:  # the second pass continues the cut thinking: put the pieces together
        thinking = prev["cut"]
        line.update(response=thinking + FORCED_ANSWER + gen.text, steps=s["steps"], forced_answer=True,
                    thinking_tokens=len(tokenizer.encode(thinking, add_special_tokens=False)),
                    new_tokens=prev["new_tokens"] + len(gen.token_ids))
    elif s["steps"] is not None and (cut := cut_after_steps(gen.thinking, s["steps"])) is not None:
        line.update(stage="thinking", cut=cut)
    if s["method"] == "rs":  # kept when the model ended its thinking by itself, within N tokens
        line["accepted"] = grade.ANSWER_MARK in gen.text and not gen.forced_answer and gen.thinking_tokens <= s["n"]
    return line


# -----------------------------------------------------------------------------
# Points and the paper's three numbers

def stats(samples):
    """Accuracy (%) and thinking statistics of one setting's samples (one per problem)."""
    n = len(samples)
    mean = lambda k: statistics.fmean(s[k] for s in samples) if n else None  # noqa: E731
    return dict(n=n, correct=sum(s["correct"] for s in samples),
                accuracy=100.0 * sum(s["correct"] for s in samples) / n if n else None,
                thinking_tokens_mean=mean("thinking_tokens"),
                thinking_tokens_median=statistics.median(s["thinking_tokens"] for s in samples) if n else None,
                hit_budget=sum(s["forced_answer"] for s in samples),
                no_answer=sum(s["extracted"] is None for s in samples),
                waits_mean=mean("waits"), steps_mean=mean("steps"))


def vote(samples, grader):
    """Majority voting over samples (in sample order): answers fall into classes of equivalent answers (the
    grader decides: "\\frac12" and "0.5" are one class); the largest class wins, a tie goes to the class seen
    first (as the reference's Counter.most_common); samples without an answer do not vote.
    Returns (the winning class's answer, is it right)."""
    classes = []  # [first sample of the class, votes]
    for s in samples:
        if s["extracted"] is None:
            continue
        for c in classes:
            if grade.equivalent(s["extracted"], c[0]["extracted"], grader):
                c[1] += 1
                break
        else:
            classes.append([s, 1])
    if not classes:
        return None, False
    first, _ = max(classes, key=lambda c: c[1])  # max keeps the first of equal counts
    return first["extracted"], first["correct"]


def majority_points(s, rows, done, name, grader):
    """Majority voting with the first k samples of each problem, k = 1, 2, 4, ... up to --samples: accuracy of
    the vote, pass@k (any of the k right), and the thinking tokens the k samples spent together."""
    per = [[done[k] for i in range(s["samples"]) if (k := (name, s["key"], r["id"], i)) in done] for r in rows]
    per = [p for p in per if len(p) == s["samples"]]  # problems with every sample done
    points = {}
    for k in sorted({2 ** j for j in range(int(math.log2(s["samples"])) + 1)} | {s["samples"]}):
        firsts = [p[:k] for p in per]
        votes = [vote(p, grader) for p in firsts]
        n = len(firsts)
        points[f"{s['key']},k={k}"] = dict(
            n=n, k=k, correct=sum(v[1] for v in votes), accuracy=100.0 * sum(v[1] for v in votes) / n if n else None,
            pass_at_k=100.0 * sum(any(x["correct"] for x in p) for p in firsts) / n if n else None,
            thinking_tokens_mean=statistics.fmean(sum(x["thinking_tokens"] for x in p) for p in firsts) if n else None,
            per_sample_thinking=statistics.fmean(x["thinking_tokens"] for p in firsts for x in p) if n else None,
            no_answer=sum(v[0] is None for v in votes), bound=s["bound"], unit="tokens")
    return points


def rejection_point(s, rows, done, name, max_tries):
    """Rejection sampling at one budget: each problem's kept try (accepted, or its last one when all
    --max-tries ran past the budget: capped, counted wrong), the tries it took, the share capped."""
    kept, tries, capped = [], [], 0
    for r in rows:
        ts = [done[(name, s["key"], r["id"], t)] for t in range(max_tries) if (name, s["key"], r["id"], t) in done]
        ok = [t for t in ts if t["accepted"]]
        if ok:
            kept.append(ok[0])
            tries.append(len(ts))
        elif len(ts) == max_tries:
            capped += 1
            tries.append(max_tries)
            kept.append(dict(ts[-1], correct=False))
    p = stats(kept)
    within = [x for x in kept if x["accepted"]]  # the thinking of capped problems ran past the budget by design
    p.update(tries_mean=statistics.fmean(tries) if tries else None, capped=capped,
             thinking_tokens_mean=statistics.fmean(x["thinking_tokens"] for x in within) if within else None,
             thinking_tokens_median=statistics.median(x["thinking_tokens"] for x in within) if within else None)
    return p


def summarize(tasks, settings, done, max_tries):
    """{task: {method: {control, scaling, scaling_per_doubling, performance, settings: {key: point}}}}."""
    results = {}
    for name, (rows, grader) in tasks.items():
        per_method = {}
        for s in settings:
            points = per_method.setdefault(s["method"], {})
            if s["method"] == "majority":
                points.update(majority_points(s, rows, done, name, grader))
                continue
            if s["method"] == "rs":
                p = rejection_point(s, rows, done, name, max_tries)
            else:
                p = stats([x for r in rows if (x := done.get((name, s["key"], r["id"], 0))) and "stage" not in x])
            points[s["key"]] = dict(p, budget=s["budget"], wait=s["wait"], n_asked=s["n"], bound=s["bound"],
                                    unit=s["unit"])
        results[name] = {m: dict(**sweep_metrics(list(points.values()), m), settings=points)
                         for m, points in per_method.items()}
    return results


def control_value(p):
    """a of the paper's Control: the run's average compute in the unit its bound is in (steps or tokens;
    majority voting: the thinking of one sample, as its budget caps each sample)."""
    if p["unit"] == "steps":
        return p["steps_mean"]
    return p.get("per_sample_thinking", p["thinking_tokens_mean"])


def sweep_metrics(points, method=None):
    """
    The paper's three numbers (s1, Section 3.2, equations 1-3) over the runs A of one method, each run a
    point with its accuracy f(a) (%) and average thinking tokens a:

    Control = |{a in A : a_min <= a <= a_max}| / |A| (%): the share of runs whose average thinking stays
      within the bound the run set (a_max: its thinking budget, the N tokens or steps its prompt asks for;
      a_min = 0, as in the paper). scc counts steps, the rest tokens; a run with no bound (no budget) is
      within. ccc's prompts name no number: "short" is within when it thinks less than "long", and "long"
      when it thinks more. Budget forcing caps thinking by construction, so 100%.
    Scaling = the mean of (f(b) - f(a)) / (b - a) over all pairs of runs with a < b: accuracy points per
      1,000 thinking tokens. Positive: more thinking helps. `scaling_per_doubling` is the same with log2(a)
      on the x axis (the paper's plots are log scale). None with fewer than two distinct token counts.
    Performance = max over A of f(a), the best accuracy (%).
    """
    points = [p for p in points if p["n"] and p["thinking_tokens_mean"] is not None]
    if not points:
        return dict(control=None, scaling=None, scaling_per_doubling=None, performance=None)
    if method == "ccc" and len(points) == 2:
        short, long = points  # in the table's order
        within = 2 * (control_value(short) < control_value(long))
    else:
        within = sum(p["bound"] is None or control_value(p) <= p["bound"] for p in points)
    slopes, log_slopes = [], []
    for a, b in product(points, points):
        ta, tb = a["thinking_tokens_mean"], b["thinking_tokens_mean"]
        if ta < tb:
            slopes.append(1000.0 * (b["accuracy"] - a["accuracy"]) / (tb - ta))
            if ta > 0:
                log_slopes.append((b["accuracy"] - a["accuracy"]) / (math.log2(tb) - math.log2(ta)))
    return dict(control=100.0 * within / len(points),
                scaling=statistics.fmean(slopes) if slopes else None,
                scaling_per_doubling=statistics.fmean(log_slopes) if log_slopes else None,
                performance=max(p["accuracy"] for p in points))


# -----------------------------------------------------------------------------
# What a person reads: the table, and accuracy against thinking tokens (the paper's Figures 1 and 4)

def fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def point_notes(p):
    """The columns only some methods have: steps (scc), tries (rs), pass@k (majority voting)."""
    notes = []
    if p.get("unit") == "steps" and p.get("steps_mean") is not None:
        notes.append(f"steps {p['steps_mean']:.1f}")
    if "tries_mean" in p:
        notes.append(f"tries {fmt(p['tries_mean'], '.2f')}, capped {p['capped']}")
    if "pass_at_k" in p:
        notes.append(f"pass@{p['k']} {fmt(p['pass_at_k'])}")
    return ", ".join(notes)


def print_table(results):
    w = max(12, *map(len, results))
    k = max([22] + [len(key) for per_method in results.values() for r in per_method.values() for key in r["settings"]])
    print(f"{'task':<{w}} {'setting':<{k}} {'acc%':>6} {'n':>5} {'think mean':>10} {'median':>7} {'hit cap':>7} "
          f"{'no ans':>6}")
    for name, per_method in results.items():
        for method, r in per_method.items():
            for key, p in r["settings"].items():
                if p["n"]:
                    print(f"{name:<{w}} {key:<{k}} {p['accuracy']:6.1f} {p['n']:5d} "
                          f"{fmt(p['thinking_tokens_mean']):>10} {fmt(p.get('thinking_tokens_median'), '.0f'):>7} "
                          f"{p.get('hit_budget', 0):7d} {p['no_answer']:6d}  {point_notes(p)}")
            print(f"{name:<{w}} {NAMES[method]}: Control {fmt(r['control'])}%  Scaling {fmt(r['scaling'], '+.1f')} "
                  f"per 1k tokens ({fmt(r['scaling_per_doubling'], '+.1f')} per doubling)  Performance "
                  f"{fmt(r['performance'])}%")


# How each method's line looks: budget forcing in blues (one line per Wait count, darker with more Waits), a
# prompt alone dashed and the same prompt with forcing solid in one colour, sampled methods in their own.
WAIT_STYLES = [("#6baed6", "o", "-"), ("#2171b5", "s", "--"), ("#08306b", "^", ":"), ("#4a1486", "D", "-.")]
METHOD_STYLES = {"tcc": ("tab:orange", "v", "--"), "tcc+bf": ("tab:orange", "v", "-"), "scc": ("tab:green", "P", "--"),
                 "scc+bf": ("tab:green", "P", "-"), "ccc": ("tab:purple", "X", ":"), "rs": ("tab:red", "s", "-"),
                 "majority": ("tab:brown", "D", "-")}


def curves(method, points):
    """The lines one method draws: [(label, (colour, marker, line style), [(x, y, no budget?)])]. Budget forcing
    draws one line per Wait count across its budgets; every other method one line across its settings."""
    drawn = [(p["thinking_tokens_mean"], p["accuracy"], p) for p in points.values()
             if p["n"] and p["thinking_tokens_mean"] is not None]
    if method != "bf":
        return [(NAMES[method], METHOD_STYLES[method], [(x, y, False) for x, y, _ in drawn])]
    lines = {}
    for x, y, p in drawn:
        lines.setdefault(p["wait"], []).append((x, y, not isinstance(p["budget"], int)))
    return [(f"budget forcing, {w} Wait{'s' * (w != 1)}", WAIT_STYLES[i % len(WAIT_STYLES)], pts)
            for i, (w, pts) in enumerate(sorted(lines.items()))]


def figure(results):
    """Accuracy against average thinking tokens, one panel per task, on a log x axis as the paper's Figures 1 and
    4; a legend names the lines, hollow rings mark the settings without a thinking budget. None when matplotlib
    is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return None
    cols = min(2, len(results))  # two panels a row: four tasks read as a square, not a strip
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    for ax, (name, per_method) in zip(axes.flat, results.items()):
        xs = []
        for method, r in per_method.items():
            for label, (color, marker, style), pts in curves(method, r["settings"]):
                pts = sorted(pts)
                xs += [x for x, _, _ in pts]
                ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], color=color, marker=marker, ls=style, ms=6,
                        lw=1.6, label=label)
                free = [(x, y) for x, y, nobudget in pts if nobudget]
                ax.plot([x for x, _ in free], [y for _, y in free], "o", ms=13, mfc="none", mec=color, mew=1.5)
        if xs and min(xs) > 0:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))  # 16, 32, 64 rather than 2^4, 2^5
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.plot([], [], "o", ms=13, mfc="none", mec="gray", mew=1.5, label="no thinking budget")
        ax.set(title=name, xlabel="average thinking tokens per problem", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    plt.close(fig)  # pyplot lets go of it; the caller saves it
    return fig
