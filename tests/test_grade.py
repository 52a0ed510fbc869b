"""grade.py: every case of tests/grade_cases.py graded as its source expects, math-verify's own verdict on each
case where we differ from it on purpose (with the reason), and the extraction rules one at a time.

    python tests/test_grade.py    # agreement with the expected verdicts: ours and math-verify's, per source
"""

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grade  # noqa: E402
from grade_cases import CASES  # noqa: E402

logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeout warnings on unparsable answers

ORDER = "hendrycks compares lists in order; MATH's comma lists are mostly sets of solutions, read as sets by " \
        "math-verify and s1's judge, and so here"
# The cases where our verdict is not the source's, and why.
OURS_WRONG = {
    ("10, 4, -2", r"\boxed{4, 10, -2}"): ORDER,
    ("0.1, 4, 2", r"\boxed{4, .1, 2}"): ORDER,
    ("1,22", "1.22"): 'a gold "1,22" is read as the list 1, 22: MATH500 writes lists without spaces ("-2,1"); only '
                      "the answer's side gets the decimal-comma reading",
    (r"\text{13}", "$13$"): "math-verify's table calls \\text{13} text, not the number; we read a number as a "
                            "number (and so does math-verify's own verify today)",
}

BOXED_LETTER = "math-verify's letter extraction does not look inside \\boxed{}, \\text{} or parentheses"
ANSWER_SECTION = "only the answer after <|im_start|>answer counts; math-verify reads the thinking too"
DECIMAL_COMMA = "math-verify reads LaTeX \"1000,99\" as the set {1000, 99}; with a gold that is one number, a comma " \
                "before a group that is not three digits is a decimal comma"
DOLLAR_GOLD = "math-verify cannot parse a gold with \\$ and ,\\! (\"\\$32,\\!348\"); both sides are read as numbers"
# Where math-verify's parse + verify of the whole response and we differ, on purpose.
DIFFERENCES = {
    ("-2,1", "Answer: 1, -2"): 'the whole "Answer:" line is the answer, a list; math-verify takes its last number',
    ("12", r"so it comes $\boxed{12^{\mathrm{th}}}$."): "an ordinal suffix is formatting (s1's judge, minerva)",
    (r"\text{Navin}", r"Answer: \text{Navin}"): 'the "Answer:" line is read as LaTeX even without $ around it',
    ("C", r"... hence \boxed{C} ..."): BOXED_LETTER,
    ("5", r"\boxed{3}, no wait: \boxed{5}"): "boxes with words between them are a correction, not a set: "
                                             "the last one counts",
    ("x^2 - 1", "Answer:\n\\begin{align*}\nx^2 - 1\n\\end{align*}"): "display math after \"Answer:\" is the "
                                                                     "answer, an align environment too",
    ("1000.99", "Answer: $1000,99$"): DECIMAL_COMMA,
    ("1000.99", r"\boxed{1000,99}"): DECIMAL_COMMA,
    ("1000", r"\boxed{1 000}"): "math-verify reads LaTeX \"1 000\" as 1 times 000; digits in groups of three are one "
                                "number",
    ("3, 5", "Answer: 3,5"): "math-verify's number reader takes 3,5 for 3.5; with a gold that is a list, it is one",
    ("5", "<|im_start|>think\n5 is the answer, so<|im_start|>answer\nAnswer:"): ANSWER_SECTION,
    (r"\$32,\!348", r"\boxed{32348}"): DOLLAR_GOLD,
    (r"\$32,\!348", "Answer: $32,348"): DOLLAR_GOLD,
    (r"\$36", r"\boxed{36}"): DOLLAR_GOLD,
    ("25", "<|im_start|>think\n\\boxed{24}<|im_start|>answer\nFinal Answer: 25"): ANSWER_SECTION,
    ("B", r"\boxed{B}"): BOXED_LETTER,
    ("C", "Answer: (C)"): BOXED_LETTER,
    ("D", "Final Answer: D) 5 eV"): BOXED_LETTER,
    ("A", r"\boxed{\text{A}}"): BOXED_LETTER,
    ("B", r"\boxed{\textbf{(B)}}"): BOXED_LETTER,
    ("A", "Answer: The correct choice is (A)."): BOXED_LETTER,
    ("D", r"Answer: $\boxed{D}$"): BOXED_LETTER,
    ("B", "Answer: b"): "a lone lowercase letter is that choice, as the reference harness reads it",
    ("B", "Answer: B or C"): "an answer naming two letters is wrong; math-verify takes the first",
    ("B", "<|im_start|>think\nmaybe \\boxed{A}<|im_start|>answer\nAnswer: \\boxed{B}"): ANSWER_SECTION,
    ("C", r"I pick \boxed{C}, since (A) and (B) fail"): BOXED_LETTER,
}


def math_verify_verdict(gold, response, grader):
    """The reference: math-verify's parse of the whole response, verified against the gold (its letter
    extraction for GPQA)."""
    from math_verify import LatexExtractionConfig, ExprExtractionConfig, StringExtractionConfig, parse, verify
    config = [StringExtractionConfig()] if grader == "choice" else [LatexExtractionConfig(), ExprExtractionConfig()]
    if grader != "choice" and "$" not in gold:
        gold = f"${gold}$"
    # the same 30 s timeouts as grade.py: a busy machine must not decide the verdict
    return bool(verify(parse(gold, config, parsing_timeout=30), parse(response, config, parsing_timeout=30),
                       timeout_seconds=30))


def test_the_cases_are_graded_as_their_sources_say():
    assert len(CASES) >= 300 and len({(g, r, k) for k, g, r, _, _ in CASES}) == len(CASES)  # no case twice
    wrong = {}
    for grader, gold, response, expected, source in CASES:
        if grade.check(response, gold, grader)["correct"] != expected:
            wrong[(gold, response)] = source
    assert set(wrong) == set(OURS_WRONG), {k: v for k, v in wrong.items() if k not in OURS_WRONG}


@pytest.mark.parametrize("gold,response", list(DIFFERENCES))
def test_where_we_differ_from_math_verify(gold, response):
    (grader, expected), = {(k, e) for k, g, r, e, _ in CASES if (g, r) == (gold, response)}
    assert grade.check(response, gold, grader)["correct"] == expected  # we follow the source ...
    assert math_verify_verdict(gold, response, grader) != expected  # ... and math-verify does not


@pytest.mark.parametrize("response,answer,how", [
    ("<|im_start|>think\n\\boxed{1}<|im_start|>answer\nso \\boxed{2}<|im_end|>", "2", "the last \\boxed{}"),
    (r"\boxed{1}, \boxed{2} and \boxed{3}", "1, 2, 3", "3 boxed answers, read as one"),
    (r"$x = \boxed{3}$ or $x = \boxed{-2}$", "3, -2", "2 boxed answers, read as one"),
    (r"\boxed{(3,3)} for part (a) and \boxed{(1,1)}", "(3,3), (1,1)", "2 boxed answers, read as one"),
    (r"\boxed{3}. No wait: \boxed{5}", "5", "the last \\boxed{}"),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}", "the last \\boxed{}"),
    ("Answer: 3\n\nFinal Answer:\n\n 4.\nmore", "4", 'the "Answer:" line'),
    ("**Final Answer:** $7$", "$7$", 'the "Answer:" line'),
    ("Answer:\n\\[\n x = 5\n\\]\nso that is it", "x = 5", 'the "Answer:" line'),
    ("Final Answer: the point is\n$$(2, 3)$$", "(2, 3)", 'the "Answer:" line'),
    ("Answer: Here is the solution:\n\n10", "10", 'the "Answer:" line'),
    ("so we get 12 apples, then 1 000 pears.", "1000", "the last number or expression in the text"),
    ("<|im_start|>answer\nno idea<|im_end|>", None, "no \\boxed{}, no \"Answer:\" and no number in the answer"),
    (r"so \boxed{2", None, "no \\boxed{}, no \"Answer:\" and no number in the answer"),  # a box cut off
])
def test_extract(response, answer, how):
    assert grade.extract(response) == (answer, how)


@pytest.mark.parametrize("text,single,number", [
    ("1,000", False, "1000"), ("1 000 000", False, "1000000"), (r"10,\!080", False, "10080"),
    ("1{,}000", False, "1000"),
    ("1,000.99", False, "1000.99"), (r"\$1,000", False, "1000"), ("25.", False, "25"), (".5", False, ".5"),
    ("1000,99", True, "1000.99"), ("0,111", True, "0.111"), ("1000,99", False, None), ("3,5", False, None),
    ("0,111", False, None), ("12,34,567", True, None), ("x", True, None), (r"12^{\mathrm{th}}", True, None),
])
def test_plain_number(text, single, number):
    assert grade.plain_number(text, single) == number


@pytest.mark.parametrize("answer,letters", [
    ("B", {"B"}), ("(b)", {"B"}), ("**C**", {"C"}), (r"\text{D}", {"D"}), ("The answer is (A).", {"A"}),
    ("D) 5 eV", {"D"}), ("B. Because C is wrong", {"B"}), ("B or C", {"B", "C"}), ("(A) and (C)", {"A", "C"}),
    ("5.2 eV", set()), ("None of the above", set()),
])
def test_choice_letters(answer, letters):
    assert grade.choice_letters(answer) == letters


def test_check_says_why():
    assert grade.check(r"\boxed{B, C}", "B", "choice") == dict(
        extracted=None, correct=False, why="the last \\boxed{} names two letters, B and C")
    right = grade.check("Answer: 1,000", "1000", "integer")
    why = 'the "Answer:" line; equal integers: equal to the gold answer'
    assert right == dict(extracted="1,000", correct=True, why=why)
    assert grade.check("nothing here", "5", "math")["why"] == "no \\boxed{}, no \"Answer:\" and no number in the answer"
    with pytest.raises(ValueError):
        grade.check(r"\boxed{1}", "1", "nope")


def test_equivalent():
    assert grade.equivalent(r"\frac12", "0.5", "math") and not grade.equivalent("1/3", "0.5", "math")
    assert grade.equivalent("025", "25", "integer") and not grade.equivalent("B", "C", "choice")


def agreement():
    """Ours and math-verify's verdicts against the expected ones, per source: the numbers in the README."""
    rows = {}
    for grader, gold, response, expected, source in CASES:
        row = rows.setdefault(source, [0, 0, 0])
        row[0] += 1
        row[1] += grade.check(response, gold, grader)["correct"] == expected
        row[2] += math_verify_verdict(gold, response, grader) == expected
    rows["all"] = [sum(r[i] for r in list(rows.values())) for i in range(3)]
    print(f"{'source':<10} {'cases':>5} {'ours':>12} {'math-verify':>12}")
    for source, (n, ours, mv) in rows.items():
        print(f"{source:<10} {n:5d} {ours:5d} {100 * ours / n:5.1f}% {mv:5d} {100 * mv / n:5.1f}%")


if __name__ == "__main__":
    agreement()
