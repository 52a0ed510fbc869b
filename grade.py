"""
Grade a model's response against the gold answer, and say why: find the answer in the response, then
compare it with the gold one by the task's rule.

Where the answer is (`extract`), in the text after the last "<|im_start|>answer" (the whole response when
the model never got there), first that applies:

    1. \\boxed{...}   the last box; boxes that follow each other with only ",", ";", "and" or "or" between
                     them are one answer, a set or tuple ("\\boxed{1} and \\boxed{-2}" answers "1, -2")
    2. Answer:       the last "Answer:" ("Final Answer:" too): the rest of its line, or when that is empty
                     the display math or the line after it
    3. running text  the last number or math expression (math-verify's own extraction)

How it is compared (`check`):

    integer (AIME)   the answer as an integer ("025", "1,000", "\\text{25}", "$25$")
    math (MATH500)   math-verify: both sides parsed to sympy and compared as numbers, expressions, sets,
                     intervals, matrices or equations; a number written with thousands separators or a
                     decimal comma ("1 000", "1,000.99", "1000,99") is read as one number when the gold is one
    choice (GPQA)    the one letter A-D the answer picks; an answer naming no letter, or two different
                     letters, is wrong (the reference took it for "A")

math-verify's parse + verify of the whole response is the reference this is measured against
(tests/test_grade.py, on tests/grade_cases.py); where the two differ on purpose, a test says why.
What it leaves out: the reference harness's API-model judge (s1 graded MATH with gpt-4o-mini), and
matching a GPQA answer by the text of a choice instead of its letter.
"""

import re
import threading
from decimal import Decimal
from functools import lru_cache

ANSWER_MARK = "<|im_start|>answer"
GRADERS = ("integer", "math", "choice")


# -----------------------------------------------------------------------------
# Where the answer is

def answer_section(response):
    """The text after the last <|im_start|>answer (all of it without one), special tokens removed."""
    i = response.rfind(ANSWER_MARK)
    section = response if i < 0 else response[i + len(ANSWER_MARK):]
    return re.sub(r"<\|[a-z_]+\|>", "", section)  # <|im_end|>, <|endoftext|>


def boxes(text):
    """Every closed \\boxed{...} (or \\fbox{...}) in text as (start, end, content), braces balanced."""
    found = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth = 1
        for i in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append((m.start(), i + 1, text[m.end():i]))
                break
    # a box inside another box is part of the outer one's content
    return [b for b in found if not any(o[0] < b[0] and b[1] <= o[1] for o in found)]


def joins(between):
    """Does the text between two boxes make them one answer? Punctuation and "and"/"or" do ("\\boxed{1},
    \\boxed{2}", "\\boxed{(3,3)} for part (a) and \\boxed{(1,1)}", "$x = \\boxed{3}$ or $x = \\boxed{-2}$"); a
    sentence or a correction does not ("\\boxed{3}. No wait: \\boxed{5}", "\\boxed{3}, no wait: \\boxed{5}")."""
    t = re.sub(r"\\text\{([^{}]*)\}|\\(?:quad|qquad|[,;!: ])|\$|\\[()\[\]]", r" \1 ", between)
    t = re.sub(r"\b[A-Za-z](?:_\{?\d+\}?)?\s*=", " ", t).strip()  # the "x =" before a box
    return t in ("", ",", ";") or (len(t) <= 40 and not re.search(r"[.:!?\n]", t)
                                   and re.search(r"(^|[\s,])(and|or)$|[,;]$", t) is not None)


def last_boxes(text):
    """The contents of the last box and of the boxes joined to it (see joins), in order."""
    found = boxes(text)
    if not found:
        return []
    group = [found[-1]]
    for b in reversed(found[:-1]):
        if not joins(text[b[1]:group[0][0]]):
            break
        group.insert(0, b)
    return [content.strip() for _, _, content in group]


DISPLAY = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\begin\{(align\*?|equation\*?|gather\*?)\}(.+?)\\end\{\3\}", re.S)


def after_answer_mark(text):
    """What follows the last "Answer:": the rest of its line, else the display math or the line after it."""
    marks = list(re.finditer(r"answer\s*:\**", text, re.IGNORECASE))
    if not marks:
        return None
    rest = text[marks[-1].end():]
    line, _, after = rest.partition("\n")
    line = line.strip().strip("*").strip()
    # Display math after the mark: "Answer:\n\\[\n x = 5\n\\]", or after words that only lead to it ("the point is").
    if not line or line.startswith(("$$", "\\[", "\\begin")):
        m = DISPLAY.match(rest.lstrip(" *\n"))
    else:
        m = DISPLAY.match(after.lstrip()) if not re.search(r"[\d$\\]", line) else None
    if m:
        return next(g for g in (m.group(1), m.group(2), m.group(4)) if g is not None).strip()
    if not line or line.endswith(":"):  # "Answer:\n\n10", "Answer: Here is the solution:\n\n10"
        line = next((ln.strip() for ln in after.splitlines() if ln.strip()), "")
    return line.rstrip(".").strip() or None


def extract(response):
    """(the answer text, how it was found): see the module docstring. (None, why) when there is none."""
    section = answer_section(response)
    found = last_boxes(section)
    if len(found) > 1:
        return ", ".join(found), f"{len(found)} boxed answers, read as one"
    if found:
        return (found[0], "the last \\boxed{}") if found[0] else (None, "the last \\boxed{} is empty")
    line = after_answer_mark(section)
    if line is not None:
        return line, 'the "Answer:" line'
    value = mv_parse(section, wrap=False)
    if len(value) == 2:  # math-verify returns [sympy value, the string it read]
        return value[1].rstrip(".,;:"), "the last number or expression in the text"
    return None, "no \\boxed{}, no \"Answer:\" and no number in the answer"


# -----------------------------------------------------------------------------
# Numbers with separators: "1 000", "1,000.99", "10,\\!080", "1000,99"

SEPARATOR = r"(?:,|\s|\{,\}|,\\!|\\,|\\!|\\ |~)"
GROUPED = re.compile(rf"[+-]?[1-9]\d{{0,2}}(?:{SEPARATOR}\d{{3}})+(?:\.\d+)?")  # thousands groups, "." decimals
COMMA_DECIMAL = re.compile(r"[+-]?\d+,\d+")  # "1000,99", "0,111": a decimal comma (when the gold is one number)


def plain_number(text, single):
    """text as a number string ("1,000.99" -> "1000.99"), or None when it is not one number. single: the gold
    is one number, so "1000,99" is 1000.99 and not the two numbers 1000 and 99."""
    t = re.sub(r"\\text\{\s*\}|\\[$%]|[$%]|\\!|\\mathrm\{[^{}]*\}|\\text\{[^{}]*\}", "", text).strip().rstrip(".")
    t = re.sub(r"^\\left\(|\\right\)$", "", t).strip()
    if re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", t):
        return t
    if GROUPED.fullmatch(t):
        return re.sub(SEPARATOR, "", t)
    if single and COMMA_DECIMAL.fullmatch(t):
        return t.replace(",", ".")
    return None


# -----------------------------------------------------------------------------
# Comparing

def _timeout():
    # math-verify interrupts slow sympy work with signal.alarm, which only works in the main thread; elsewhere it
    # would raise, so there it runs without a timeout. The alarm counts wall-clock seconds: its default of 5 cut
    # ordinary answers short on a busy machine (and a cut answer is wrong), so a hang costs 30 s instead.
    return 30 if threading.current_thread() is threading.main_thread() else None


def mv_parse(text, wrap=True):
    """math-verify's parse: [sympy value, the string it read], or [] when it finds nothing. wrap: read the
    whole text as one LaTeX expression ("3, 5, 7" a set, "(3,4]" an interval) unless it has math delimiters."""
    from math_verify import parse
    if wrap and not re.search(r"(?<!\\)\$|\\\(|\\\[|\\boxed", text):
        text = f"${text}$"
    return parse(text, parsing_timeout=_timeout())


@lru_cache(maxsize=16384)
def parse_gold(gold):
    number = plain_number(gold, single=False)
    return mv_parse(number if number is not None else gold)


def math_equal(answer, gold):
    """math-verify's verdict on an answer text, with numbers normalised first (see plain_number)."""
    from math_verify import verify
    gold_number = plain_number(gold, single=False)
    number = plain_number(answer, gold_number is not None)
    if gold_number is not None and number is not None and "%" not in gold + answer:
        # two plain numbers: compared at once, as math-verify would (to 6 decimals), without sympy's time
        a, b = Decimal(number), Decimal(gold_number)
        return a == b or round(a, 6) == round(b, 6)
    gold_value = parse_gold(gold)
    value = mv_parse(number) if number is not None else mv_parse(answer)
    if not value and number is None:  # not LaTeX: let math-verify find the number in the words
        value = mv_parse(answer, wrap=False)
    return bool(value) and verify(gold_value, value, timeout_seconds=_timeout())


def integer_equal(answer, gold):
    """AIME: the answer as an integer ("025", "$25$", "25.", "\\text{25}", "1,000"), else its math-verify value."""
    number = plain_number(answer, single=True)
    if number is not None and re.fullmatch(r"[+-]?\d+(\.0*)?", number):
        return int(float(number)) == int(gold)
    return math_equal(answer, str(int(gold)))


def choice_letters(answer):
    """The letters A-D an answer picks: the whole answer ("B", "(b)", "**C**"), else letters marked as
    choices ("(B)", "B)", "\\text{B}"), else one leading "B." / "B:", else lone capitals A-D."""
    text = re.sub(r"\\(?:text|textbf|mathrm|mathbf|boxed)\{([^{}]*)\}", r"\1", answer)
    text = re.sub(r"[$*]", "", text).strip()
    whole = re.fullmatch(r"\(?([A-Da-d])\)?[.:]?", text)
    if whole:
        return {whole.group(1).upper()}
    marked = set(re.findall(r"\(([A-D])\)|(?<![A-Za-z(])([A-D])\)", text))
    marked = {a or b for a, b in marked}
    if marked:
        return marked
    leading = re.match(r"([A-D])[.:](\s|$)", text)
    if leading:
        return {leading.group(1)}
    return set(re.findall(r"(?<![A-Za-z\\])([A-D])(?![A-Za-z])", text))


def check(response: str, gold: str, grader: str) -> dict:
    """Grade one whole response: {"extracted": the answer found (None: none), "correct": bool, "why": how the
    answer was found and why it is right or wrong}."""
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose from {', '.join(GRADERS)}")
    answer, how = extract(response)
    if answer is None:
        return dict(extracted=None, correct=False, why=how)
    if grader == "choice":
        letters = choice_letters(answer)
        if len(letters) != 1:
            why = f"{how} names {'no letter A-D' if not letters else 'two letters, ' + ' and '.join(sorted(letters))}"
            return dict(extracted=None, correct=False, why=why)
        (letter,) = letters
        right = letter == gold.strip().upper()
        return dict(extracted=letter, correct=right,
                    why=f"{how} picks {letter}, {'the' if right else 'not the'} gold letter")
    same = (integer_equal if grader == "integer" else math_equal)(answer, gold)
    rule = "equal integers" if grader == "integer" else "math-verify"
    return dict(extracted=answer, correct=same, why=f"{how}; {rule}: {'equal to' if same else 'not'} the gold answer")


@lru_cache(maxsize=65536)  # majority voting asks about the same pairs again each time results.json is written
def equivalent(a: str, b: str, grader: str) -> bool:
    """Are two extracted answers the same answer? Majority voting counts votes by these classes."""
    if grader == "choice" or a == b:
        return a == b
    return integer_equal(a, b) if grader == "integer" and re.fullmatch(r"[+-]?\d+", b.strip()) else math_equal(a, b)
