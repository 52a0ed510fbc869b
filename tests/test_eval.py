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
    ("90^\\circ", "\\boxed{90}", True), ("90^\\circ", "\\boxed{90^{\\circ}}", True), ("90^\\circ", "\\boxed{45^\\circ}", False),
    ("\\frac{270}7\\text{ degrees}", "\\boxed{\\frac{270}{7}}", True),
    ("5\\text{ cm}", "\\boxed{5}", True), ("5", "\\boxed{5 \\text{ cm}}", True),
    ("\\$36", "\\boxed{36}", True), ("\\$36", "\\boxed{\\$37}", False),
    # percentages
    ("10\\%", "\\boxed{10\\%}", True), ("10\\%", "\\boxed{10}", True), ("10\\%", "\\boxed{20\\%}", False),
    # intervals
    ("(3,4]", "\\boxed{(3,4]}", True), ("(3,4]", "\\boxed{[3,4]}", False),
    ("(2,\\infty)", "\\boxed{(2, \\infty)}", True), ("(2,\\infty)", "\\boxed{[2,\\infty)}", False),
    # sets and ordered pairs / tuples
    ("3, 5, 7", "\\boxed{7, 5, 3}", True), ("3, 5, 7", "\\boxed{\\{3,5,7\\}}", True), ("3, 5, 7", "\\boxed{3, 5}", False),
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
])
def test_bad_input(argv, words, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), *argv, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written
