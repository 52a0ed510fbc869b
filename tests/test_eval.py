"""eval.py: answer extraction and grading (real gold answers, MATH conventions, GPQA letters), the sweep
metrics on known inputs, bad input, and an end-to-end run of a tiny random model that is then resumed."""

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_DATA

import eval as ev

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
        assert ev.grade(boxed, row["gold"], task), (row["id"], raw)
        assert ev.grade(f"<|im_start|>answer\nFinal Answer: {raw}<|im_end|>", row["gold"], task), (row["id"], raw)


@pytest.mark.parametrize("task,file,rows", REAL, ids=[t for t, _, _ in REAL])
def test_gold_answers_are_wrong_for_other_problems(task, file, rows):
    _, rows = real_rows(task, file, rows)

    def canon(a):  # strings that differ only by spacing or an "x =" prefix are the same answer
        return re.sub(r"^[a-z]\s*=|\s", "", a)

    checked = 0
    for i, row in enumerate(rows):
        other = next(r["gold"] for r in rows[i + 1:] + rows[:i] if canon(r["gold"]) != canon(row["gold"]))
        assert not ev.grade(f"\\boxed{{{other}}}", row["gold"], task), (row["id"], row["gold"], other)
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


# -----------------------------------------------------------------------------
# MATH answer conventions, written by hand: (gold, response, correct?)

MATH_CASES = [
    # fractions, \dfrac, decimals
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", True), ("\\frac{1}{2}", "\\boxed{0.5}", True),
    ("\\frac{1}{2}", "\\boxed{1/2}", True), ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False),
    ("\\dfrac{17}{50}", "\\boxed{0.34}", True), ("\\frac43", "\\boxed{\\frac{4}{3}}", True),
    ("0.15", "\\boxed{\\frac{3}{20}}", True), (".0000672", "\\boxed{6.72\\times 10^{-5}}", True),
    # degrees and units
    ("90^\\circ", "\\boxed{90}", True), ("90^\\circ", "\\boxed{90^{\\circ}}", True),
    ("90^\\circ", "\\boxed{45^\\circ}", False),
    ("\\frac{270}7\\text{ degrees}", "\\boxed{\\frac{270}{7}}", True),
    ("5\\text{ cm}", "\\boxed{5}", True), ("5", "\\boxed{5 \\text{ cm}}", True),
    ("\\$36", "\\boxed{36}", True), ("\\$36", "\\boxed{\\$37}", False),
    # percentages
    ("10\\%", "\\boxed{10\\%}", True), ("10\\%", "\\boxed{10}", True), ("10\\%", "\\boxed{20\\%}", False),
    # intervals
    ("(3,4]", "\\boxed{(3,4]}", True), ("(3,4]", "\\boxed{[3,4]}", False),
    ("(2,\\infty)", "\\boxed{(2, \\infty)}", True), ("(2,\\infty)", "\\boxed{[2,\\infty)}", False),
    # sets and ordered pairs / tuples
    ("3, 5, 7", "\\boxed{7, 5, 3}", True), ("3, 5, 7", "\\boxed{\\{3,5,7\\}}", True),
    ("3, 5, 7", "\\boxed{3, 5}", False),
    ("(6,31,-1)", "\\boxed{(6, 31, -1)}", True), ("(6,31,-1)", "\\boxed{(31,6,-1)}", False),
    ("(-2,1)", "\\boxed{(1,-2)}", False), ("1 \\pm \\sqrt{19}", "\\boxed{1+\\sqrt{19}, 1-\\sqrt{19}}", True),
    # radicals and pi
    ("11\\sqrt2", "\\boxed{11\\sqrt{2}}", True), ("11\\sqrt2", "\\boxed{\\sqrt{242}}", True),
    ("11\\sqrt2", "\\boxed{11\\sqrt{3}}", False), ("\\frac{\\sqrt{3}}{3}", "\\boxed{\\frac{1}{\\sqrt{3}}}", True),
    ("\\pi", "\\boxed{\\pi}", True), ("2\\pi", "\\boxed{6.28}", False), ("-\\frac{\\pi}{6}", "\\boxed{-\\pi/6}", True),
    # text answers
    ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}", True), ("\\text{Evelyn}", "\\boxed{Evelyn}", True),
    ("\\text{Evelyn}", "\\boxed{\\text{Bob}}", False), ("\\text{east}", "\\boxed{\\text{west}}", False),
    # expressions, complex numbers, bases, thousands separators, matrices
    ("2k+2", "\\boxed{2(k+1)}", True), ("2k+2", "\\boxed{2k+1}", False), ("\\cot x", "\\boxed{\\tan x}", False),
    ("6 - 5i", "\\boxed{6-5i}", True), ("6 - 5i", "\\boxed{6+5i}", False), ("52_8", "\\boxed{42_8}", False),
    ("10,\\!080", "\\boxed{10080}", True), ("x=5", "\\boxed{5}", True),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
     "\\boxed{\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}}", True),
    # multiple boxed: the last one counts; the answer section beats the thinking
    ("5", "\\boxed{3}, no wait: \\boxed{5}", True), ("5", "\\boxed{5}, no wait: \\boxed{3}", False),
    ("5", "<|im_start|>think\n\\boxed{5}<|im_start|>answer\nAnswer: \\boxed{4}<|im_end|>", False),
    ("5", "<|im_start|>think\n\\boxed{4}<|im_start|>answer\nFinal Answer: The final answer is $5$. I hope it is "
          "correct.<|im_end|>", True),
    ("\\frac{1}{2}", "Answer:\n\n$\\frac12$", True),
    # no answer at all, or a box cut off by the token limit
    ("5", "I think it is 5 but I am not sure", False), ("5", "", False), ("2", "so \\boxed{2", False),
]


@pytest.mark.parametrize("gold,response,correct", MATH_CASES)
def test_math_conventions(gold, response, correct):
    assert ev.grade(response, gold, "math500") is correct


@pytest.mark.parametrize("response,gold,correct", [
    ("\\boxed{025}", "25", True), ("\\boxed{25}", "025", True), ("Final Answer: $25$.", "25", True),
    ("\\boxed{\\text{25}}", "25", True), ("\\boxed{1,000}", "1000", True), ("\\boxed{\\frac{50}{2}}", "25", True),
    ("\\boxed{26}", "25", False), ("\\boxed{25.5}", "25", False), ("no answer", "25", False),
])
def test_aime_integer_comparison(response, gold, correct):
    assert ev.grade(response, gold, "aime24") is correct


def test_extract_answer():
    assert ev.extract_answer("<|im_start|>think\nhmm<|im_start|>answer\nFinal Answer: 7<|im_end|>") == "7"
    assert ev.extract_answer("x \\boxed{\\frac{1}{\\sqrt{2}}} y") == "\\frac{1}{\\sqrt{2}}"  # nested braces
    assert ev.extract_answer("Answer: 3\n\nFinal Answer:\n\n 4.\nmore") == "4"  # the last Answer:, next line
    assert ev.extract_answer("<|im_start|>answer\nno idea<|im_end|>") is None
    assert ev.extract_answer("\\boxed{}") is None


@pytest.mark.parametrize("response,letter", [
    ("\\boxed{B}", "B"), ("Answer: (C)", "C"), ("Final Answer: D) 5 eV", "D"), ("\\boxed{\\text{A}}", "A"),
    ("\\boxed{\\textbf{(B)}}", "B"), ("Answer: The correct choice is (A).", "A"), ("**Answer: C**", "C"),
    ("Answer: B. Because C is wrong", "B"), ("Answer: $\\boxed{D}$", "D"), ("\\boxed{5.2 eV}", None),
    ("Answer: b", None), ("no answer", None),
])
def test_gpqa_letter(response, letter):
    extracted = ev.extract_answer(response)
    assert (extracted and ev.choice_letter(extracted)) == letter or (letter is None and not extracted)
    for gold in "ABCD":
        assert ev.grade(response, gold, "gpqa_diamond") is (gold == letter)  # no letter: wrong, never "A"


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


def test_grade_rejects_unknown_task():
    with pytest.raises(ValueError):
        ev.grade("\\boxed{1}", "1", "nope")


# -----------------------------------------------------------------------------
# Metrics on known inputs

def point(acc, tokens, n=10, within=10):
    return dict(accuracy=acc, thinking_tokens_mean=tokens, n=n, within_budget=within)


def test_sweep_metrics_known_values():
    m = ev.sweep_metrics([point(20.0, 1000), point(30.0, 2000), point(50.0, 4000, within=5)])
    # pairs: (1000,2000) 10/1000, (1000,4000) 30/3000, (2000,4000) 20/2000 -> all 10 points per 1k tokens
    assert m["scaling"] == pytest.approx(10.0)
    # per doubling: 10/1, 30/2, 20/1 -> 15
    assert m["scaling_per_doubling"] == pytest.approx(15.0)
    assert m["control"] == pytest.approx(100.0 * 25 / 30)
    assert m["performance"] == 50.0


def test_sweep_metrics_negative_single_and_ties():
    m = ev.sweep_metrics([point(40.0, 3000), point(30.0, 1000), point(10.0, 3000)])
    # pairs with a's tokens < b's: (1000->3000): +10 and -20 over 2000 tokens -> 5 and -10 -> mean -2.5
    assert m["scaling"] == pytest.approx(-2.5)
    one = ev.sweep_metrics([point(40.0, 3000)])
    assert one["scaling"] is None and one["performance"] == 40.0 and one["control"] == 100.0


def test_setting_stats():
    samples = [dict(correct=True, thinking_tokens=t, forced_answer=t == 8, extracted="1" if t else None, waits=w)
               for t, w in [(8, 0), (3, 1), (0, 2), (5, 1)]]
    samples[1]["correct"] = False
    s = ev.setting_stats(samples, budget=6)
    assert (s["n"], s["correct"], s["accuracy"]) == (4, 3, 75.0)
    assert s["thinking_tokens_mean"] == 4.0 and s["thinking_tokens_median"] == 4.0
    assert (s["hit_budget"], s["no_answer"], s["within_budget"], s["waits_mean"]) == (1, 1, 3, 1.0)
    assert ev.setting_stats(samples, budget=None)["within_budget"] == 4


def test_sweep_settings():
    args = ev.parse_args(["--budgets", "512, 1024,auto", "--waits", "0,2"])
    assert ev.sweep_settings(args) == [(512, 0), (512, 2), (1024, 0), (1024, 2), ("auto", 0), ("auto", 2)]
    assert ev.sweep_settings(ev.parse_args(["--max-thinking-tokens", "64", "--wait", "1"])) == [(64, 1)]
    assert ev.sweep_settings(ev.parse_args([])) == [(None, 0)]


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
])
def test_bad_input(argv, words, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), *argv, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


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


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


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
        assert s["correct"] == ev.grade(s["response"], s["gold"], "math" if s["task"].endswith(".jsonl") else s["task"])
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
        r = results["tasks"][name]
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
    # Under torchrun each process decodes every other pending sample of a setting into a file of its own;
    # process 0 merges them at the end: the same samples and results as one process. A share left
    # behind by a crash counts as done on the next run, whatever its number of processes.
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


def test_sweep_bookkeeping_with_a_scripted_generator(tmp_path, monkeypatch, capsys):
    """generate() replaced by a script whose answers are right exactly when the budget lets problem i think
    its 10*(i+1) tokens, so every number in results.json is known in advance."""
    import sample

    calls = []

    def fake_generate(model, tokenizer, prompts, *, max_thinking_tokens=None, **kw):
        calls.append((len(prompts), max_thinking_tokens, kw))
        gens = []
        for q in prompts:
            i = int(q[1:])
            needs = 10 * (i + 1)
            forced = max_thinking_tokens is not None and needs > max_thinking_tokens
            thinking = max_thinking_tokens if forced else needs
            answer = "\nFinal Answer:" if forced else f"\nAnswer: \\boxed{{{i}}}"
            text = "t" * thinking + "<|im_start|>answer" + answer
            gens.append(sample.Generation(prompt=q, text=text, thinking="t" * thinking, answer=answer,
                                          token_ids=[0] * len(text), forced=[False] * len(text),
                                          thinking_tokens=thinking, waits=kw["wait"], forced_answer=forced,
                                          finish_reason="stop"))
        return gens

    monkeypatch.setattr(sample, "load_model", lambda *a, **k: (None, None))
    monkeypatch.setattr(sample, "generate", fake_generate)
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(dict(id=f"q{i}", problem=f"p{i}", answer=i)) + "\n" for i in range(4)))
    out = tmp_path / "out"
    ev.main(["--tasks", str(problems), "--out", str(out), "--budgets", "15,25,none", "--wait", "2",
             "--batch-size", "3", "--wait-str", "Hmm", "--max-new-tokens", "99"])

    assert [c[:2] for c in calls] == [(3, 15), (1, 15), (3, 25), (1, 25), (3, None), (1, None)]
    assert all(c[2]["wait"] == 2 and c[2]["wait_str"] == "Hmm" and c[2]["max_new_tokens"] == 99
               and c[2]["temperature"] == 0.0 for c in calls)
    r = json.loads((out / "results.json").read_text())["tasks"][str(problems)]
    s = r["settings"]
    # thinking per problem: budget 15 -> 10,15,15,15; 25 -> 10,20,25,25; none -> 10,20,30,40
    assert [s[k]["accuracy"] for k in s] == [25.0, 50.0, 100.0]
    assert [s[k]["thinking_tokens_mean"] for k in s] == [13.75, 20.0, 25.0]
    assert [s[k]["thinking_tokens_median"] for k in s] == [15.0, 22.5, 25.0]
    assert [s[k]["hit_budget"] for k in s] == [3, 2, 0] and [s[k]["no_answer"] for k in s] == [3, 2, 0]
    slopes = [25 / 6.25, 75 / 11.25, 50 / 5.0]  # accuracy points per thinking token, the three pairs
    assert r["scaling"] == pytest.approx(1000 * sum(slopes) / 3)
    assert (r["control"], r["performance"]) == (100.0, 100.0)
    samples = read_jsonl(out / "samples.jsonl")
    assert [(x["id"], x["correct"], x["extracted"]) for x in samples[:4]] == [
        ("q0", True, "0"), ("q1", False, None), ("q2", False, None), ("q3", False, None)]
    assert "Performance 100.0%" in capsys.readouterr().out


def test_repeated_ids_are_refused(tmp_path, capsys):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "problem": "a", "answer": 1}\n{"id": 1, "problem": "b", "answer": 2}\n')
    with pytest.raises(SystemExit) as e:
        ev.main(["--tasks", str(problems), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "share an id" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    ev.plot({"t": {"settings": {}}}, str(tmp_path / "scaling.png"))
    assert "matplotlib is not installed" in capsys.readouterr().out and not (tmp_path / "scaling.png").exists()
