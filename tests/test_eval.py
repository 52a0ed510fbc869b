"""eval.py and methods.py: real gold answers graded, the sweep metrics and majority voting on known inputs,
every method of the paper on a scripted engine whose thinking lengths are known (so Control, Scaling and tries
are exact numbers) and its resumption after crashes, bad input, and end-to-end runs of a tiny random model
(one process, torchrun, and every method through the real sample.generate). Grading cases: test_grade.py."""

import json

import re
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_DATA, read_jsonl

import eval as ev
import grade
import methods


def graded(response, gold, task):
    return grade.check(response, gold, ev.TASKS[task]["grader"])["correct"]


# -----------------------------------------------------------------------------
# Every real gold answer graded against itself and against another problem's answer

REAL = [("math500", "math500/test.jsonl", ev.math_rows), ("aime24", "aime24/aime24_nofigures.jsonl", ev.aime_rows),
        ("aime25", "aime25/aime25_nofigures.jsonl", ev.aime_rows)]


def real_rows(task, file, rows):
    path = SHARED_DATA / file
    if not path.is_file():
        pytest.skip(f"needs {path} (the team's shared data)")
    records = ev.read_records(str(path))
    return records, rows(records)


@pytest.mark.parametrize("task,file,rows", REAL, ids=[t for t, _, _ in REAL])
def test_gold_answers_grade_against_themselves(task, file, rows):
    records, rows = real_rows(task, file, rows)
    for rec, row in zip(records, rows):
        raw = str(rec["answer"])  # as the file has it: "025", "\\dfrac{17}{50}", "10,\\!080", "\\$32,\\!348"
        boxed = f"<|im_start|>think\nso 7?<|im_start|>answer\nAnswer: thus \\boxed{{{raw}}}.<|im_end|>"
        assert graded(boxed, row["gold"], task), (row["id"], raw)
        assert graded(f"<|im_start|>answer\nFinal Answer: {raw}<|im_end|>", row["gold"], task), (row["id"], raw)


@pytest.mark.parametrize("task,file,rows", REAL, ids=[t for t, _, _ in REAL])
def test_gold_answers_are_wrong_for_other_problems(task, file, rows):
    _, rows = real_rows(task, file, rows)

    def canon(a):  # strings that differ only by spacing or an "x =" prefix are the same answer
        return re.sub(r"^[a-z]\s*=|\s", "", a)

    checked = 0
    for i, row in enumerate(rows):
        other = next(r["gold"] for r in rows[i + 1:] + rows[:i] if canon(r["gold"]) != canon(row["gold"]))
        assert not graded(f"\\boxed{{{other}}}", row["gold"], task), (row["id"], row["gold"], other)
        checked += 1
    assert checked == len(rows) >= 30


def test_aime_control_characters_are_restored():
    path = SHARED_DATA / "aime25/aime25_nofigures.jsonl"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    raw = {str(r["id"]): r["problem"] for r in ev.read_records(str(path))}
    rows = {r["id"]: r["problem"] for r in ev.aime_rows(ev.read_records(str(path)))}
    assert "\f" in raw["18"] and "\t" in raw["19"]
    assert "\\frac" in rows["18"] and "\\triangle" in rows["19"]
    assert not any(c in p for p in rows.values() for c in "\b\f\t")


def test_gpqa_prompt_and_shuffle():
    rec = {"Question": " Which? ", "Correct Answer": "right", "Incorrect Answer 1": "w1",
           "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}
    rows = ev.gpqa_rows([dict(rec, **{"Record ID": f"r{i}"}) for i in range(40)])
    assert rows == ev.gpqa_rows([dict(rec, **{"Record ID": f"r{i}"}) for i in range(40)])  # fixed seed
    for row in rows:
        question, choices = row["problem"].split("\n\n")
        assert question == "Which?"
        lines = choices.split("\n")
        assert [ln[:3] for ln in lines] == ["A) ", "B) ", "C) ", "D) "]
        assert sorted(ln[3:] for ln in lines) == ["right", "w1", "w2", "w3"]
        assert lines["ABCD".index(row["gold"])][3:] == "right"
    assert len({row["gold"] for row in rows}) == 4  # the correct answer is not always in one place


# -----------------------------------------------------------------------------
# Metrics, steps and votes on known inputs

def point(acc, tokens, bound=None, n=10, unit="tokens", steps=None):
    return dict(accuracy=acc, thinking_tokens_mean=tokens, n=n, bound=bound, unit=unit, steps_mean=steps)


def test_sweep_metrics_known_values():
    m = methods.sweep_metrics([point(20.0, 1000, 1024), point(30.0, 2000, 1024), point(50.0, 4000, 4096)])
    # pairs: (1000,2000) 10/1000, (1000,4000) 30/3000, (2000,4000) 20/2000 -> all 10 points per 1k tokens
    assert m["scaling"] == pytest.approx(10.0)
    # per doubling: 10/1, 30/2, 20/1 -> 15
    assert m["scaling_per_doubling"] == pytest.approx(15.0)
    # Control counts runs (the paper's A), not samples: the 2000-token run broke its 1024 budget
    assert m["control"] == pytest.approx(100.0 * 2 / 3)
    assert m["performance"] == 50.0


def test_sweep_metrics_negative_single_ties_steps_and_classes():
    m = methods.sweep_metrics([point(40.0, 3000), point(30.0, 1000), point(10.0, 3000)])
    # pairs with a's tokens < b's: (1000->3000): +10 and -20 over 2000 tokens -> 5 and -10 -> mean -2.5
    assert m["scaling"] == pytest.approx(-2.5) and m["control"] == 100.0  # no bound: within
    one = methods.sweep_metrics([point(40.0, 3000)])
    assert one["scaling"] is None and one["performance"] == 40.0 and one["control"] == 100.0
    # step-conditional control counts steps against its bound, not tokens
    steps = [point(30.0, 900, 16, unit="steps", steps=20.0), point(35.0, 1500, 32, unit="steps", steps=31.0)]
    assert methods.sweep_metrics(steps)["control"] == 50.0
    # class-conditional: "short" must think less than "long"; both count, or neither
    assert methods.sweep_metrics([point(30.0, 900), point(40.0, 2000)], "ccc")["control"] == 100.0
    assert methods.sweep_metrics([point(30.0, 2000), point(40.0, 900)], "ccc")["control"] == 0.0


def test_stats():
    samples = [dict(correct=True, thinking_tokens=t, forced_answer=t == 8, extracted="1" if t else None, waits=w,
                    steps=t // 2) for t, w in [(8, 0), (3, 1), (0, 2), (5, 1)]]
    samples[1]["correct"] = False
    s = methods.stats(samples)
    assert (s["n"], s["correct"], s["accuracy"]) == (4, 3, 75.0)
    assert s["thinking_tokens_mean"] == 4.0 and s["thinking_tokens_median"] == 4.0 and s["steps_mean"] == 1.75
    assert (s["hit_budget"], s["no_answer"], s["waits_mean"]) == (1, 1, 1.0)


def test_steps():
    thinking = "first\n\nsecond\nthird\n  \nfourth"
    assert methods.count_steps(thinking) == 4
    assert methods.cut_after_steps(thinking, 2) == "first\n\nsecond\n"
    assert methods.cut_after_steps(thinking, 3) == "first\n\nsecond\nthird\n"
    assert methods.cut_after_steps(thinking, 4) is None and methods.cut_after_steps(thinking, 9) is None


def test_vote_counts_equivalent_answers_together():
    def votes(*answers, gold="1/2", grader="math"):
        samples = [dict(extracted=a, correct=a is not None and grade.equivalent(a, gold, grader)) for a in answers]
        return methods.vote(samples, grader)
    # "0.5", "\frac12" and "1/2" are one class of 3 votes against 2 for "3"
    assert votes("3", "0.5", r"\frac12", "3", "1/2") == ("0.5", True)
    assert votes("3", "0.5", "3", None, None, None) == ("3", False)  # no answer, no vote
    assert votes("0.5", "3") == ("0.5", True) and votes("3", "0.5") == ("3", False)  # a tie: the first class
    assert votes(None, None) == (None, False)
    assert votes("B", "C", "C", gold="C", grader="choice") == ("C", True)
    assert votes("025", "25", "7", gold="25", grader="integer") == ("025", True)


def test_sample_seeds_are_stable_and_distinct():
    seeds = {methods.sample_seed(0, "aime24", str(i), "rs", t) for i in range(30) for t in range(16)}
    assert len(seeds) == 30 * 16 and all(0 <= s < 2 ** 63 for s in seeds)
    assert methods.sample_seed(0, "aime24", "1", "rs", 0) == 9154451727564011447  # the same in every process
    assert methods.sample_seed(1, "aime24", "1", "rs", 0) != methods.sample_seed(0, "aime24", "1", "rs", 0)


def test_sweep():
    settings = methods.sweep(ev.parse_args(["--budgets", "512, 1024,auto", "--waits", "0,2"]))
    assert [(s["budget"], s["wait"]) for s in settings] == [(512, 0), (512, 2), (1024, 0), (1024, 2), ("auto", 0),
                                                            ("auto", 2)]
    assert [s["key"] for s in settings][:2] == ["budget=512,wait=0", "budget=512,wait=2"]
    one = methods.sweep(ev.parse_args(["--max-thinking-tokens", "64", "--wait", "1"]))
    assert [(s["key"], s["bound"]) for s in one] == [("budget=64,wait=1", 64)]
    every = methods.sweep(ev.parse_args(["--methods", "tcc,tcc+bf,scc+bf,ccc,rs,majority", "--budgets", "64,128",
                                         "--steps", "4", "--samples", "8"]))
    by_key = {s["key"]: s for s in every}
    assert list(by_key) == ["tcc:tokens=64", "tcc:tokens=128", "tcc+bf:tokens=64", "tcc+bf:tokens=128",
                            "scc+bf:steps=4", "ccc:short", "ccc:long", "rs:tokens=64", "rs:tokens=128",
                            "majority:budget=none,wait=0"]
    keys = ("tcc:tokens=64", "tcc+bf:tokens=64", "scc+bf:steps=4", "rs:tokens=64")
    tcc, tcc_bf, scc_bf, rs = (by_key[k] for k in keys)
    assert tcc["suffix"] == "\n\nThink for up to 64 tokens." and tcc["budget"] is None and tcc_bf["budget"] == 64
    assert scc_bf["suffix"] == "\n\nThink for up to 4 steps." and (scc_bf["steps"], scc_bf["unit"]) == (4, "steps")
    assert by_key["ccc:short"]["suffix"].startswith("\n\nAnswer after a short amount of thinking.")
    assert rs["budget"] == 65 and rs["bound"] == 64  # thinking may run to 65 tokens, so a natural end at 64 counts
    assert by_key["majority:budget=none,wait=0"]["samples"] == 8


# -----------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2

@pytest.mark.parametrize("argv,words", [
    (["--tasks", "aime99"], "unknown task"),
    (["--tasks", "aime24", "--data-dir", "/nonexistent-dir"], "no data file"),
    (["--tasks", "gpqa_diamond", "--data-dir", "/nonexistent-dir"], "gated"),
    (["--budgets", "512,,1024"], "empty item"),
    (["--budgets", "512,abc"], "bad thinking budget"),
    (["--budgets", "0"], "bad thinking budget"),
    (["--waits", "-1"], "bad wait count"),
    (["--batch-size", "x"], "invalid int"),
    (["--dtype", "float8"], "invalid choice"),
    (["--methods", "bf,beam"], "unknown method 'beam'"),
    (["--methods", "majority", "--samples", "0"], "--samples"),
    (["--methods", "majority", "--temperature", "0"], "greedy decoding draws the same sample"),
    (["--methods", "rs", "--budgets", "512", "--temperature", "0"], "greedy decoding draws the same sample"),
    (["--methods", "rs", "--budgets", "512", "--max-tries", "0"], "--max-tries"),
    (["--methods", "tcc"], "numeric --budgets"),
    (["--methods", "rs", "--budgets", "none,auto"], "numeric --budgets"),
    (["--methods", "scc", "--steps", "0"], "bad step count"),
])
def test_bad_input(argv, words, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), *argv, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


# -----------------------------------------------------------------------------
# Every method on a scripted engine whose thinking lengths are known, so every number is exact

VOTES = {0: ["1", "0", "0.0", r"\frac{0}{2}"], 1: ["1", "2", "2", "2"], 2: ["2"] * 4, 3: [None, None, "3", "3"]}


class Scripted:
    """sample.generate replaced by a script. Problem p<i> (gold i) thinks L = 20 * (i + 1) tokens in steps
    (lines) of ten and answers \\boxed{i}; a budget below L cuts it and forces an empty "Final Answer:".
    Asked to think short or long it thinks L / 2 or 2 L, and is right only after the full L. The token and
    step prompts it ignores. Sampled, it knows from the seed which sample it draws: rejection sampling's try t
    thinks 20 tokens less per try (20 at least), right on even tries; majority voting's sample j thinks
    10 * (j + 1) tokens and answers VOTES[i][j] (None: no answer)."""

    def __init__(self, task, max_tries=16, samples=4):
        self.calls = []
        self.who = {methods.sample_seed(0, task, f"q{i}", m, t): (m, t)
                    for i in range(4) for m, n in (("rs", max_tries), ("majority", samples)) for t in range(n)}

    def __call__(self, model, tokenizer, requests, *, raw, on_finish, **kw):
        """One call per round of eval.py: every request of the round, each with its own settings."""
        import sample
        assert raw
        self.calls.append([(r["max_thinking_tokens"], r["temperature"], r["seed"]) for r in requests])
        out = []
        for r in requests:
            prompt, max_thinking_tokens, seed = r["prompt"], r["max_thinking_tokens"], r["seed"]
            assert (seed is None) == (r["temperature"] == 0)
            i = int(re.search(r"user\np(\d)", prompt).group(1))
            if prompt.endswith(methods.FORCED_ANSWER):  # scc+bf's answer pass: it never finished its thinking
                out.append(sample.Generation(prompt, "", "", "", [0], [False], 0, 0, False, "stop"))
                on_finish(len(out) - 1, out[-1])
                continue
            need, answer = 20 * (i + 1), f"\\boxed{{{i}}}"
            think = need // 2 if "short amount" in prompt else 2 * need if "long amount" in prompt else need
            if seed is not None:
                method, t = self.who[seed]
                if method == "rs":
                    think = need = max(20, need - 20 * t)
                    answer = f"\\boxed{{{i if t % 2 == 0 else i + 100}}}"
                else:
                    think = need = 10 * (t + 1)
                    answer = "" if VOTES[i][t] is None else f"\\boxed{{{VOTES[i][t]}}}"
            forced = max_thinking_tokens is not None and think > max_thinking_tokens
            tokens = max_thinking_tokens if forced else think
            thinking = "tttttttttt\n" * (tokens // 10) + "t" * (tokens % 10)
            answer = "\nFinal Answer:" if forced else "\n" + (answer if think >= need else "I am not sure")
            text = thinking + "<|im_start|>answer" + answer
            out.append(sample.Generation(prompt, text, thinking, answer, [0] * (tokens + 9), [False] * (tokens + 9),
                                         tokens, 0, forced, "stop"))
            on_finish(len(out) - 1, out[-1])
        return out


class ScriptedTokenizer:
    """What eval.py asks of a tokenizer: the chat template, and a token count (one per "t") for scc+bf's cut."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<|im_start|>user\n{messages[0]['content']}<|im_end|>\n<|im_start|>assistant\n"

    def encode(self, text, add_special_tokens=False):
        return [0] * text.count("t")


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    """(run eval.py's main with these flags on four scripted problems -> results.json's tasks, the engine)."""
    import sample
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(dict(id=f"q{i}", problem=f"p{i}", answer=i)) + "\n" for i in range(4)))
    monkeypatch.setattr(sample, "load_model", lambda *a, **k: (None, ScriptedTokenizer()))
    monkeypatch.setattr(ev, "plot", lambda results, path: None)  # drawn in test_plot_has_a_line_per_wait_and_method

    def run(*argv, out="out", max_tries=16):
        engine = Scripted(str(problems), max_tries)
        monkeypatch.setattr(sample, "generate", engine)
        ev.main(["--tasks", str(problems), "--out", str(tmp_path / out), "--batch-size", "3", "--samples", "4",
                 "--max-tries", str(max_tries), *argv])
        return json.loads((tmp_path / out / "results.json").read_text())["tasks"][str(problems)], engine
    return run


def slopes(*points):
    """The paper's Scaling of (thinking tokens, accuracy) points, per 1,000 tokens."""
    pairs = [(a, b) for a in points for b in points if a[0] < b[0]]
    return sum(1000 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in pairs) / len(pairs)


ALL = ["--methods", "bf,tcc,tcc+bf,scc,scc+bf,ccc,rs,majority", "--budgets", "30,50", "--steps", "3,5"]


def test_every_method_on_a_scripted_engine(scripted, tmp_path, capsys):
    r, engine = scripted(*ALL, "--wait", "2")

    def column(method, field):
        return [p[field] for p in r[method]["settings"].values()]

    # budget forcing at 30 and 50 tokens: thinking 20,30,30,30 and 20,40,50,50; right only when not cut
    assert column("bf", "accuracy") == [25.0, 50.0] and column("bf", "thinking_tokens_mean") == [27.5, 40.0]
    assert column("bf", "hit_budget") == [3, 2] and column("bf", "wait") == [2, 2]
    assert (r["bf"]["control"], r["bf"]["scaling"]) == (100.0, pytest.approx(2000.0))
    # token-conditional: the prompt is ignored, 50 tokens on average, within 50 but not 30
    assert column("tcc", "thinking_tokens_mean") == [50.0, 50.0] and column("tcc", "accuracy") == [100.0, 100.0]
    assert (r["tcc"]["control"], r["tcc"]["scaling"], r["tcc"]["performance"]) == (50.0, None, 100.0)
    assert r["tcc+bf"] == dict(r["bf"], settings=r["tcc+bf"]["settings"])  # with forcing it is budget forcing
    # step-conditional: 2, 4, 6, 8 steps (5 on average): within 5 steps, not 3; forced, cut after 3 or 5 steps
    assert column("scc", "steps_mean") == [5.0, 5.0] and r["scc"]["control"] == 50.0
    assert column("scc+bf", "steps_mean") == [2.75, 4.0] and column("scc+bf", "thinking_tokens_mean") == [27.5, 40.0]
    assert column("scc+bf", "accuracy") == [25.0, 50.0] and column("scc+bf", "hit_budget") == [3, 2]
    assert (r["scc+bf"]["control"], r["scc+bf"]["scaling"]) == (100.0, pytest.approx(2000.0))
    # class-conditional: short 10..40 tokens (all wrong), long 40..160 (all right)
    assert column("ccc", "thinking_tokens_mean") == [25.0, 100.0] and column("ccc", "accuracy") == [0.0, 100.0]
    assert (r["ccc"]["control"], r["ccc"]["scaling"]) == (100.0, pytest.approx(1000 * 100 / 75))
    # rejection sampling: at 30 tokens problem i is kept at try i (tries 1,2,3,4); at 50 at tries 1,1,2,3
    assert column("rs", "tries_mean") == [2.5, 1.75] and column("rs", "capped") == [0, 0]
    assert column("rs", "accuracy") == [50.0, 75.0] and column("rs", "thinking_tokens_mean") == [20.0, 35.0]
    assert (r["rs"]["control"], r["rs"]["scaling"]) == (100.0, pytest.approx(slopes((20, 50), (35, 75))))
    # majority voting over k = 1, 2, 4 of VOTES: ties go to the first class, "0", "0.0" and "\frac{0}{2}" agree
    assert column("majority", "k") == [1, 2, 4] and column("majority", "accuracy") == [50.0, 50.0, 75.0]
    assert column("majority", "pass_at_k") == [50.0, 75.0, 100.0]
    assert column("majority", "thinking_tokens_mean") == [10.0, 30.0, 100.0]
    assert r["majority"]["scaling"] == pytest.approx(slopes((10, 50), (30, 50), (100, 75)))
    assert r["majority"]["performance"] == 75.0 and r["majority"]["control"] == 100.0

    # every greedy request went to the engine in its first call, with the first round of the sampled ones;
    # each sampled request has its own seed
    requests = [r for call in engine.calls for r in call]
    greedy = [r for r in requests if r[2] is None]
    assert {r[1] for r in greedy} == {0.0} and all(r in engine.calls[0] for r in greedy)
    sampled = [r for r in requests if r[2] is not None]
    assert len(sampled) == 10 + 7 + 16 and {r[1] for r in sampled} == {1.0}  # rs tries at 30 and 50, 4 x 4 votes
    assert [r[0] for r in sampled if engine.who[r[2]][0] == "rs"].count(31) == 10  # a natural end at 30 counts

    lines = [json.loads(x) for x in (tmp_path / "out/samples.jsonl").read_text().splitlines()]
    rejected = [x for x in lines if x["method"] == "rs" and not x["accepted"]]
    assert len(rejected) == 6 + 3 and all(x["forced_answer"] and x["thinking_tokens"] in (31, 51) for x in rejected)
    cut = [x for x in lines if x["setting"] == "scc+bf:steps=3" and "stage" not in x]
    assert [x["steps"] for x in cut] == [2, 3, 3, 3] and all(x["why"] for x in cut)
    assert cut[3]["response"].startswith("tttttttttt\n" * 3 + "<|im_start|>answer\nFinal Answer:")
    out = capsys.readouterr().out
    assert "rejection sampling: Control 100.0%" in out and "tries 2.50, capped 0" in out and "pass@4 100.0" in out


def test_rejection_sampling_caps_its_tries(scripted, tmp_path, capsys):
    r, engine = scripted("--methods", "rs", "--budgets", "30", max_tries=2)
    p = r["rs"]["settings"]["rs:tokens=30"]
    # tries 1, 2, then two capped problems: counted wrong, their thinking left out of the mean
    assert (p["tries_mean"], p["capped"], p["accuracy"], p["thinking_tokens_mean"]) == (1.75, 2, 25.0, 20.0)
    assert [len(call) for call in engine.calls] == [4, 3]  # a round of first tries, then the retries
    # a budget no try can meet: the samples are kept, the run says so in one line and exits 2
    with pytest.raises(SystemExit) as e:
        scripted("--methods", "rs", "--budgets", "10", out="none", max_tries=2)
    err = capsys.readouterr().err.strip().splitlines()  # the progress bars, then the one line
    assert e.value.code == 2 and sum("error" in x for x in err) == 1
    assert err[-1].startswith("eval.py: error: ") and "no sample ended its thinking within" in err[-1]
    assert len((tmp_path / "none/samples.jsonl").read_text().splitlines()) == 8


def test_every_method_resumes_after_a_crash(scripted, tmp_path):
    full, _ = scripted(*ALL)
    lines = (tmp_path / "out/samples.jsonl").read_text().splitlines(keepends=True)
    for cut in (5, 40, 64, 70, len(lines) - 1):  # within round 1, within later rounds, near the end
        crashed = tmp_path / f"crash{cut}"
        crashed.mkdir()
        (crashed / "samples.jsonl").write_text("".join(lines[:cut]) + lines[cut][:30])  # and half a line
        (crashed / "results.json").write_text((tmp_path / "out/results.json").read_text())
        again, engine = scripted(*ALL, out=crashed.name)
        assert again == full, cut
        redone = [json.loads(x) for x in (crashed / "samples.jsonl").read_text().splitlines()]
        assert len(redone) == len(lines)
        assert sum(map(len, engine.calls)) == len(lines) - cut  # only what the crash lost


# -----------------------------------------------------------------------------
# End to end: a tiny random model with a tiny byte-level tokenizer, a few problems of every task

def tiny_tokenizer(path):
    """256 byte tokens and Qwen's three special tokens, with a Qwen-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(path)
    return fast


def write_data(root):
    """The layout of ../shared/data (and GPQA's csv), with short problems; the AIME rows carry the
    control-character artefacts of the real files."""
    files = {
        "aime24/aime24_nofigures.jsonl": [dict(id=60, problem="Find $2+3$.", answer="005"),
                                          dict(id=71, problem="Find $\binom{4}{2}$.", answer="006")],
        "aime25/aime25_nofigures.jsonl": [dict(id="0", problem="Find $\frac{70}{1}$.", answer=70),
                                          dict(id="19", problem="In $\triangle ABC$ find 7.", answer=7)],
        "math500/test.jsonl": [dict(problem="Simplify $\\frac{2}{4}$.", answer="\\frac{1}{2}", unique_id="t/1.json"),
                               dict(problem="Who wins?", answer="\\text{Evelyn}", unique_id="t/2.json")],
        "extra.jsonl": [dict(problem="1+1?", answer="2"), dict(question="2+2?", answer=4)],
    }
    for name, rows in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "gpqa").mkdir()
    (root / "gpqa/gpqa_diamond.csv").write_text(
        "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,Record ID\n"
        '"What is 1+1?",2,3,4,5,rec1\n"Pick, the ""red"" one",red,blue,green,black,rec2\n')


def test_end_to_end_then_resume(tmp_path, monkeypatch, capsys):
    from conftest import make_tiny_checkpoint
    import sample

    ckpt, _ = make_tiny_checkpoint(tmp_path / "ckpt", vocab_size=264, hidden_size=32, num_heads=2,
                                   num_kv_heads=1, intermediate_size=48)
    tiny_tokenizer(ckpt)
    data = tmp_path / "data"
    write_data(data)
    out = tmp_path / "out"
    tasks = f"aime24,aime25,math500,gpqa_diamond,{data / 'extra.jsonl'}"
    argv = ["--model", ckpt, "--data-dir", str(data), "--tasks", tasks, "--out", str(out), "--budgets", "4,none",
            "--wait", "1", "--max-new-tokens", "32", "--batch-size", "3", "--device", "cpu"]
    ev.main(argv)

    assert {p.name for p in out.iterdir()} == {"results.json", "samples.jsonl", "scaling.png"}
    samples = read_jsonl(out / "samples.jsonl")
    names = tasks.split(",")
    settings = ["budget=4,wait=1", "budget=none,wait=1"]
    assert sorted((s["task"], s["setting"]) for s in samples) == sorted(
        (t, k) for t in names for k in settings for _ in range(2))
    assert len({(s["task"], s["setting"], s["id"]) for s in samples}) == len(samples) == 20
    for s in samples:
        grader = "math" if s["task"].endswith(".jsonl") else ev.TASKS[s["task"]]["grader"]
        assert s["correct"] == grade.check(s["response"], s["gold"], grader)["correct"] and s["why"]
        assert (s["method"], s["index"], s["seed"]) == ("bf", 0, None)
        assert s["prompt"].endswith("<|im_start|>think") and "<|im_start|>user\n" in s["prompt"]
        assert not any(c in s["prompt"] for c in "\b\f\t")  # the AIME artefacts were mapped back
        assert s["thinking_tokens"] <= (4 if s["budget"] == 4 else 32)
        if s["forced_answer"]:  # the budget ran out: the forced text is in the response
            assert s["budget"] == 4 and s["thinking_tokens"] == 4
            assert "<|im_start|>answer\nFinal Answer:" in s["response"]
    assert sum(s["forced_answer"] for s in samples) >= 5  # a random model rarely stops by itself
    by_id = {(s["task"], s["id"]): s for s in samples}
    assert "\\binom{4}{2}" in by_id[("aime24", "71")]["prompt"] and by_id[("aime24", "71")]["gold"] == "6"
    assert "\\triangle ABC" in by_id[("aime25", "19")]["prompt"]
    gpqa = by_id[("gpqa_diamond", "rec2")]
    assert re.search(rf"\n{gpqa['gold']}\) red(\n|<)", gpqa["prompt"])
    assert all(s["extracted"] in (None, *"ABCD") for s in samples if s["task"] == "gpqa_diamond")

    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["settings"] == settings
    for name in names:
        r = results["tasks"][name]["bf"]
        for key in settings:
            mine = [s for s in samples if s["task"] == name and s["setting"] == key]
            p = r["settings"][key]
            assert p["n"] == 2 and p["correct"] == sum(s["correct"] for s in mine)
            assert p["thinking_tokens_mean"] == pytest.approx(sum(s["thinking_tokens"] for s in mine) / 2)
            assert p["hit_budget"] == sum(s["forced_answer"] for s in mine)
            assert p["no_answer"] == sum(s["extracted"] is None for s in mine)
        assert r["control"] == 100.0
        assert r["performance"] == max(p["accuracy"] for p in r["settings"].values())
    assert "Control 100.0%" in capsys.readouterr().out

    # the whole sweep decoded 3 at a time, rows joining as others ended, gives what each sample gives alone
    ev.main([*argv[:argv.index("--out")], "--out", str(tmp_path / "alone"), *argv[argv.index("--out") + 2:],
             "--batch-size", "1"])
    alone = {(s["task"], s["setting"], s["id"]): s["response"] for s in read_jsonl(tmp_path / "alone/samples.jsonl")}
    assert alone == {(s["task"], s["setting"], s["id"]): s["response"] for s in samples}
    capsys.readouterr()

    # rerun: everything is done, so the model is never even loaded and nothing changes
    before = (out / "samples.jsonl").read_bytes()
    monkeypatch.setattr(sample, "load_model", lambda *a, **k: pytest.fail("a finished run loaded the model"))
    ev.main(argv)
    assert (out / "samples.jsonl").read_bytes() == before
    assert "0 samples to generate" in capsys.readouterr().out
    monkeypatch.undo()

    # a crash: the last batch lost and half a line written; the rerun makes exactly those again
    lines = before.decode().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:-3]) + lines[-1][:40])
    ev.main(argv)
    assert "3 samples to generate" in capsys.readouterr().out
    again = read_jsonl(out / "samples.jsonl")
    assert len(again) == 20 and [s["id"] for s in again] == [s["id"] for s in samples]

    # the same directory with different generation settings would mix two runs: refused
    with pytest.raises(SystemExit) as e:
        ev.main(argv + ["--temperature", "0.7"])
    assert e.value.code == 2 and "different run" in capsys.readouterr().err


def test_torchrun_processes_share_the_samples(tmp_path, capsys):
    # Under torchrun each process decodes every other problem of a task into a file of its own; process 0
    # merges them at the end: the same samples and results as one process. A share left behind by a crash
    # counts as done on the next run, whatever its number of processes.
    from conftest import make_tiny_checkpoint, run_torchrun
    ckpt, _ = make_tiny_checkpoint(tmp_path / "ckpt", vocab_size=264, hidden_size=32, num_heads=2,
                                   num_kv_heads=1, intermediate_size=48)
    tiny_tokenizer(ckpt)
    data = tmp_path / "data"
    write_data(data)

    def argv(out):
        return ["--model", ckpt, "--data-dir", str(data), "--tasks", "aime24,aime25,math500", "--out", str(out),
                "--budgets", "4,none", "--wait", "1", "--max-new-tokens", "24", "--batch-size", "2",
                "--device", "cpu"]

    one, two, three = tmp_path / "one", tmp_path / "two", tmp_path / "three"
    ev.main(argv(one))
    r = run_torchrun(ROOT / "eval.py", argv(two))
    assert "12 samples to generate by 2 processes" in r.stdout
    assert r.stdout.count("Control") == 3  # one table, printed by process 0 (3 tasks)
    assert {p.name for p in two.iterdir()} == {"results.json", "samples.jsonl", "scaling.png"}  # shares merged

    def by_key(path):
        return {(s["task"], s["setting"], s["id"]): s for s in read_jsonl(path / "samples.jsonl")}
    single, shared = by_key(one), by_key(two)
    assert len(shared) == 12 and shared.keys() == single.keys()
    assert {k: s["response"] for k, s in shared.items()} == {k: s["response"] for k, s in single.items()}
    # the split: process 0 took the first problem of each task and setting, process 1 the second
    first = {}
    for key in single:  # in the order one process made them: setting, task, problem
        first.setdefault(key[:2], key)
    assert set(list(shared)[:6]) == set(first.values())  # merged in process order
    results = [json.loads((d / "results.json").read_text()) for d in (one, two)]
    assert results[1]["complete"] and results[1]["tasks"] == results[0]["tasks"]

    # a torchrun run that crashed: process 1 had written half of the samples
    three.mkdir()
    half = [json.dumps(s) + "\n" for s in list(shared.values())[:6]]
    (three / "samples.rank1.jsonl").write_text("".join(half))
    capsys.readouterr()
    ev.main(argv(three))  # one process now
    assert "6 samples to generate, 6 already in" in capsys.readouterr().out
    assert by_key(three).keys() == single.keys() and not list(three.glob("samples.rank*"))


def test_sampled_methods_through_the_real_engine(tmp_path, monkeypatch):
    """Rejection sampling and majority voting through sample.generate on a tiny random model: every sample has
    its own seed, so the samples are the same whatever the batch size."""
    from conftest import make_tiny_checkpoint
    ckpt, _ = make_tiny_checkpoint(tmp_path / "ckpt", vocab_size=264, hidden_size=32, num_heads=2,
                                   num_kv_heads=1, intermediate_size=48)
    tiny_tokenizer(ckpt)
    write_data(tmp_path / "data")
    monkeypatch.setattr(ev, "plot", lambda results, path: None)
    argv = ["--model", ckpt, "--tasks", str(tmp_path / "data/extra.jsonl"), "--methods", "rs,majority", "--budgets",
            "4", "--samples", "2", "--max-tries", "2", "--max-new-tokens", "8", "--device", "cpu"]
    exits = []
    for out, batch in (("one", "4"), ("two", "1")):
        try:  # a random model seldom ends its thinking within 4 tokens: a problem whose tries all fail exits 2
            ev.main(argv + ["--out", str(tmp_path / out), "--batch-size", batch])
            exits.append(0)
        except SystemExit as e:
            exits.append(e.code)
        assert (tmp_path / out / "results.json").is_file()
    one, two = ({(s["setting"], s["id"], s["index"]): s for s in read_jsonl(tmp_path / d / "samples.jsonl")}
                for d in ("one", "two"))
    assert one.keys() == two.keys() and all(one[k]["response"] == two[k]["response"] for k in one)
    capped = []
    for i in ("0", "1"):  # tries 0, 1, ... until one is accepted or --max-tries 2 is reached
        tries = [one[k]["accepted"] for k in sorted(k for k in one if k[0].startswith("rs") and k[1] == i)]
        assert tries in ([True], [False, True], [False, False])
        capped.append(tries == [False, False])
    assert exits == [2 if all(capped) else 0] * 2  # every problem capped: the sweep says so and exits 2
    assert len({s["seed"] for s in one.values()}) == len(one) >= 2 + 2 * 2  # majority: 2 samples per problem
    for s in one.values():  # a try is kept only when its thinking ended by itself, within 4 tokens
        if s["method"] == "rs":
            ended_itself = "<|im_start|>answer" in s["response"] and not s["forced_answer"]
            assert s["accepted"] == (ended_itself and s["thinking_tokens"] <= 4)

    # scc+bf's answer pass continues a prompt that ends in the forced answer: no thinking left to do
    import sample
    model, tokenizer = sample.load_model(ckpt, device="cpu")
    prompt = sample.build_prompt(tokenizer, "1+1?") + "ab\n" + methods.FORCED_ANSWER
    gens = []
    args = ev.parse_args(["--batch-size", "2", "--max-new-tokens", "8"])
    request = dict(prompt=prompt, max_new_tokens=8, max_thinking_tokens=None, wait=0, temperature=0.0, seed=None)
    ev.generate_requests(model, tokenizer, [request], lambda i, g: gens.append((i, g)), args)
    (i, gen), = gens
    assert i == 0 and gen.thinking == "" and gen.thinking_tokens == 0 and not gen.forced_answer


def test_repeated_ids_are_refused(tmp_path, capsys):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "problem": "a", "answer": 1}\n{"id": 1, "problem": "b", "answer": 2}\n')
    with pytest.raises(SystemExit) as e:
        ev.main(["--tasks", str(problems), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "share an id" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_plot_has_a_line_per_wait_and_method(scripted, tmp_path):
    r, _ = scripted("--methods", "bf,tcc,majority", "--budgets", "30,none", "--waits", "0,1")
    fig = methods.figure({"p": r})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "budget forcing, 0 Waits", "budget forcing, 1 Wait", "token-conditional", "majority voting",
        "no thinking budget"]
    assert ax.get_xscale() == "log" and not ax.texts  # a legend, no labels on the points


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    ev.plot({"t": {}}, str(tmp_path / "scaling.png"))
    assert "matplotlib is not installed" in capsys.readouterr().out and not (tmp_path / "scaling.png").exists()
