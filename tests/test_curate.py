"""curate.py: s1's quality rules, the difficulty rule, the diversity draw's statistics, selection and its report,
bad input; on pools built from the real questions in ../shared/data with constructed attempts and traces."""

import json
import math
import random
import re
from collections import Counter

import pytest

from conftest import QWEN_TOKENIZER, SHARED_DATA, read_jsonl, write_jsonl
import curate
from curate import NUMBERING, draw, quality, quality_drop
from distill import append_cache, qhash, reference, slug

needs_data = pytest.mark.skipif(not (SHARED_DATA / "s1k").is_dir() or not (QWEN_TOKENIZER / "tokenizer.json").is_file(),
                                reason="needs ../shared/data (s1K questions, MATH500, AIME24, the Qwen2.5 tokenizer)")
AIME, GPQA, MATH, NUMINA = "qq8933/AIME_1983_2024", "Idavidrein/gpqa", "qfq/openaimath/Algebra", "AI-MO/NuminaMath-CoT"
COLS = dict(thinking="thinking_trajectories", attempt="attempt", domain=None)


def pool_row(question, solution, source, attempt, words=50, domain=None):
    """A row of s1's pool: a trace of `words` words (its length in tokens is what selection ranks)."""
    row = dict(question=question, solution=solution, cot_type="math", source_type=source, metadata="{}",
               thinking_trajectories=["Let me think. " + " ".join(["step"] * words)], attempt=attempt)
    return row if domain is None else dict(row, domain=domain)


@pytest.fixture(scope="module")
def real():
    """The real questions: s1K (question, solution), MATH500 (with answers), AIME24 (integer answers)."""
    if not (SHARED_DATA / "s1k").is_dir():
        pytest.skip("needs ../shared/data")
    s1k = read_jsonl(SHARED_DATA / "s1k" / "s1k_question_solution.jsonl")
    return dict(s1k=s1k, math=read_jsonl(SHARED_DATA / "math500" / "test.jsonl"),
                aime=read_jsonl(SHARED_DATA / "aime24" / "aime24_nofigures.jsonl"),
                proofs=[r for r in s1k if reference(r) is None],
                letters=[r for r in s1k if r["solution"] in ("A", "B", "C", "D")])


# -----------------------------------------------------------------------------
# Quality


def test_every_s1k_question_passes_s1s_string_rules(real):
    """s1K is the output of s1's filters: none of its 1,000 questions may be dropped by them."""
    cols = dict(thinking=None, attempt=None, domain=None)
    kept, drops = quality(real["s1k"], cols)
    assert len(kept) == 1000 and not drops


def test_numbering_regex_is_the_notebooks_loop(real):
    notebook = lambda q: any(f"p{i}." in q for i in range(1, 1000))  # noqa: E731  filter.ipynb cell 7
    made = ["p0.", "p01.", "p1.", "p999.", "p1000.", "step12. ok", "P3.", "Ap7.x", "p10", "p 3.", "(p2.5)", "pp42.",
            "p9999."]
    for t in [r["question"] for r in real["s1k"]] + made:
        assert bool(NUMBERING.search(t)) == notebook(t), t
    assert [t for t in made if notebook(t)] == ["p1.", "p999.", "step12. ok", "Ap7.x", "(p2.5)", "pp42."]


@pytest.mark.parametrize("edit, source, rule", [
    (lambda q: q + "\n[asy]draw((0,0)--(1,1));[/asy]", NUMINA, "[asy]"),
    (lambda q: q + "\n[asy]draw((0,0)--(1,1));[/asy]", AIME, None),  # AIME keeps its figures
    (lambda q: q + " ![Image](x.png) [asy]", AIME, None),  # ... whatever else it holds (the notebook's elif)
    (lambda q: q + " ![Image](https://x/y.png)", AIME, "![Image]"),
    (lambda q: "p3. " + q, NUMINA, "p{i}."),
    (lambda q: q + " See step12. below", NUMINA, "p{i}."),  # a substring match, as s1's
    (lambda q: q + " **2019** is the year.", NUMINA, "bold digit"),
    (lambda q: "**Problem** " + q + " with 5 apples", NUMINA, "bold digit"),  # the digit may follow the span
    (lambda q: "**Problem**\n" + q.replace("0", "").replace("1", ""), NUMINA, None),  # ... but on the same line
    (lambda q: q + " **bold words** only", NUMINA, None),
    (lambda q: q + " **[1]**", NUMINA, None),  # no "]" inside the span
])
def test_string_rules(real, edit, source, rule):
    question = next(r["problem"] for r in real["math"] if not re.search(r"\d|\*\*|\[asy\]", r["problem"]))
    row = pool_row(edit(question), "5", source, "5")
    assert quality_drop(row, COLS) == rule


def test_missing_fields_and_duplicates(real, tmp_path, capsys):
    rows = [pool_row(r["problem"], r["solution"], MATH, "x") for r in real["math"]]
    rows = [r for r in rows if quality_drop(r, COLS) is None][:6]  # MATH500 has [asy] figures, for one
    rows[1]["solution"], rows[2]["thinking_trajectories"], rows[3]["attempt"] = None, [], "  "
    rows.append(dict(rows[0]))
    kept, drops = quality(rows, COLS)
    assert [r["question"] for r in kept] == [rows[i]["question"] for i in (0, 4, 5)]
    assert drops == {"missing solution": 1, "missing thinking_trajectories": 1, "missing attempt": 1,
                     "duplicate question": 1}
    curate.main(["quality", "--pool", write_jsonl(tmp_path / "pool.jsonl", rows)])
    assert "7 rows, 3 pass s1's quality filters" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# The diversity draw: s1's rule against its stated probabilities


def rank_frequencies(sampler, m, n_seeds, after=None):
    """How often each rank is drawn from one domain of m questions, q<i> with the i-th longest trace, over
    n_seeds seeds; with `after` = r, the rank among the m-1 left of the second draw, in the runs whose first
    took rank r. Ranks are read off the ids drawn, not off what the sampler says."""
    counts = [0] * m
    for seed in range(n_seeds):
        picks = sampler({"d": [(f"q{i}", m - i) for i in range(m)]}, 1 if after is None else 2, random.Random(seed))
        first = int(picks[0][2][1:])
        assert picks[0][1] == first or sampler is not draw
        if after is None:
            counts[first] += 1
        elif first == after:
            second = int(picks[1][2][1:])
            counts[second - (second > first)] += 1
    return counts


def agrees(counts, probs, z=5.0):
    """Every cell within z standard errors of its probability (all cells together: a false alarm < 1e-5)."""
    n = sum(counts)
    return all(abs(c / n - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-12 for c, p in zip(counts, probs))


def power_law(m):
    return [2.0 ** -r / sum(2.0 ** -k for k in range(m)) for r in range(m)]


def wrong_sampler(weight, shortest_first=False, close_up=True):
    """A near miss of s1's rule, to show the check above rejects it."""
    def sampler(by_domain, k, rng):
        items = sorted(by_domain["d"], key=lambda t: t[1], reverse=not shortest_first)
        ranks, picks = list(range(len(items))), []  # close_up=False: every item keeps its first rank
        for _ in range(k):
            w = [weight(i if close_up else ranks[i]) for i in range(len(items))]
            i = rng.choices(range(len(items)), weights=w)[0]
            picks.append(("d", i, items.pop(i)[0]))
            ranks.pop(i)
        return picks
    return sampler


def test_draw_takes_rank_r_with_probability_proportional_to_2_to_minus_r():
    m, n = 8, 6000
    assert agrees(rank_frequencies(draw, m, n), power_law(m))
    # After the first draw took rank 1, the rest close up: the second is 2^-r over the 7 left.
    second = rank_frequencies(draw, m, n, after=1)
    assert sum(second) > 0.2 * n and agrees(second, power_law(m - 1) + [0.0]), second
    # The same check rejects near misses: shortest first, 1/(r+1), 3^-r, ranks that do not close up.
    assert not agrees(rank_frequencies(wrong_sampler(lambda r: 2.0 ** -r, shortest_first=True), m, n), power_law(m))
    assert not agrees(rank_frequencies(wrong_sampler(lambda r: 1 / (r + 1)), m, n), power_law(m))
    assert not agrees(rank_frequencies(wrong_sampler(lambda r: 3.0 ** -r), m, n), power_law(m))
    assert agrees(rank_frequencies(wrong_sampler(lambda r: 2.0 ** -r), m, n), power_law(m))  # the rule itself passes
    stuck = rank_frequencies(wrong_sampler(lambda r: 2.0 ** -r, close_up=False), m, n, after=1)
    assert not agrees(stuck, power_law(m - 1) + [0.0])


def test_draw_picks_domains_uniformly_and_drops_empty_ones():
    n = 20000
    first = [draw({"big": [(f"b{i}", i) for i in range(9)], "one": [("o", 1)]}, 1, random.Random(s))[0][0]
             for s in range(n)]
    assert agrees([first.count("big"), first.count("one")], [0.5, 0.5])  # not 9:1 by size
    for seed in range(50):  # an emptied domain is dropped: 10 draws take everything, no error
        picks = draw({"big": [(f"b{i}", i) for i in range(9)], "one": [("o", 1)]}, 10, random.Random(seed))
        assert sorted(p[2] for p in picks) == sorted(["o"] + [f"b{i}" for i in range(9)])
    assert draw({"a": [("x", 1)]}, 5, random.Random(0)) == [("a", 0, "x")]  # fewer than asked: all there is


def domain_counts(pick_lists):
    return Counter(d for picks in pick_lists for d, _, _ in picks)


def test_benchmark_weighting_after_a_number_of_draws():
    by_domain = {d: [(f"{d}{i}", i) for i in range(50)] for d in "abc"}
    weights = {"a": 3, "b": 1}  # c has none
    n = 4000
    later = domain_counts(draw(by_domain, 8, random.Random(s), weights, after=6)[6:] for s in range(n // 2))
    assert later["c"] == 0 and agrees([later["a"], later["b"]], [0.75, 0.25])
    early = domain_counts(draw(by_domain, 6, random.Random(s), weights, after=6) for s in range(n // 6))
    assert agrees([early[d] for d in "abc"], [1 / 3] * 3)
    rows = [dict(question=f"g{i}", source_type=GPQA) for i in range(8)] + [
        dict(question=f"a{i}", source_type=AIME) for i in range(2)]
    domain_of = {qhash(r["question"]): ("x" if r["question"] in ("g0", "g1", "g2", "a0") else "y") for r in rows}
    # GPQA scaled by 0.5 * 2 / 8: x: int(3 * 0.125) + 1 = 1, y: int(5 * 0.125) + 1 = 1
    assert curate.benchmark_weights(rows, domain_of) == {"x": 1, "y": 1}


# -----------------------------------------------------------------------------
# Difficulty and selection on a constructed pool with constructed attempts


def constructed_pool(real):
    """Nine real questions: the rows (trace length and domain made up) and the attempts of models A and B."""
    aime, math500, proofs, letter = real["aime"], real["math"], real["proofs"], real["letters"][0]
    boxed = lambda x: f"So the answer is $\\boxed{{{x}}}$."  # noqa: E731
    wrong_letter = "ABCD"[("ABCD".index(letter["solution"]) + 1) % 4]
    spec = [  # question, solution, source, the teacher's attempt, trace words, domain; attempts of A and B
        (aime[0]["problem"], aime[0]["answer"], AIME, boxed(aime[0]["answer"]), 90, "11", boxed(int(aime[0]["answer"])),
         boxed(1)),  # A is right (204 = 204)
        (aime[1]["problem"], aime[1]["answer"], AIME, boxed(1), 80, "05", boxed(2), boxed(aime[1]["answer"])),  # B
        (aime[2]["problem"], aime[2]["answer"], AIME, boxed(aime[2]["answer"]), 70, "05", boxed(3), "no idea"),
        (math500[0]["problem"], math500[0]["solution"], MATH, boxed(math500[0]["answer"]), 400, "51", boxed(0), ""),
        (math500[1]["problem"], math500[1]["solution"], MATH, boxed(math500[1]["answer"]), 20, "51", boxed(0),
         boxed(0)),
        (math500[2]["problem"], math500[2]["solution"], MATH, boxed(0), 60, "51", boxed(0),
         boxed(math500[2]["answer"])),  # B is right
        (proofs[0]["question"], proofs[0]["solution"], NUMINA, "proof", 30, "26", "A proof.", "Another proof."),
        (proofs[1]["question"], proofs[1]["solution"], NUMINA, "proof", 40, "26", "A proof.", "Another proof."),
        (letter["question"], letter["solution"], GPQA, f"Answer: ({letter['solution']})", 50, "81",
         f"({wrong_letter})", "I do not know"),
    ]
    rows = [pool_row(q, sol, src, att, words, dom) for q, sol, src, att, words, dom, _, _ in spec]
    return rows, {"m/A": [s[6] for s in spec], "m/B": [s[7] for s in spec]}


def write_attempts(work, rows, attempts):
    """Attempt caches as `curate.py attempts` writes them, without grades: select grades them itself."""
    for name, texts in attempts.items():
        append_cache(str(work / "attempts" / f"{slug(name)}.jsonl"), dict(model=name),
                     [dict(id=qhash(r["question"]), text=t, finish="stop") for r, t in zip(rows, texts)])


def select(tmp_path, pool, *extra, out="sel.jsonl"):
    curate.main(["select", "--pool", str(pool), "--work", str(tmp_path / "work"), "--out", str(tmp_path / out),
                 "--models", "m/A,m/B", "--tokenizer", str(QWEN_TOKENIZER), *extra])
    return read_jsonl(tmp_path / out), json.loads((tmp_path / out.replace(".jsonl", ".report.json")).read_text())


@needs_data
def test_difficulty_rule_and_selection(real, tmp_path, capsys):
    rows, attempts = constructed_pool(real)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    write_attempts(tmp_path / "work", rows, attempts)
    unsolved = [2, 3, 4, 6, 7, 8]  # 0 solved by A, 1 and 5 by B; 6 and 7 have free-text references (proofs)
    chosen, report = select(tmp_path, pool, "--n", "6", "--long-min", "100")
    assert [r["question"] for r in chosen] == [rows[i]["question"] for i in unsolved]  # pool order
    assert report["stages"] == dict(pool=9, complete=9, quality=9, difficulty=6, selected=6)
    assert report["difficulty"]["first_solved_by"] == {"m/A": 1, "m/B": 2}
    assert report["difficulty"]["free_text_references"] == {"kept as unsolved": 2}
    why = {r["question"]: r["kept_because"] for r in chosen}
    assert why[rows[2]["question"]].startswith("benchmark source qq8933")  # AIME, the teacher is right
    assert "trace" in why[rows[3]["question"]] and why[rows[8]["question"]].startswith("benchmark source Idavidrein")
    assert all(why[rows[i]["question"]].startswith("diversity") for i in (4, 6, 7))  # short trace / no teacher grade
    assert report["selected_by"] == dict(benchmark=3, diversity=3)
    assert report["per_source"][AIME] == dict(pool=3, quality=3, difficulty=1, selected=1)
    assert report["per_domain"]["26"] == dict(candidates=2, selected=2)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    assert [r["thinking_tokens"] for r in chosen] == [len(tok.encode(r["thinking_trajectories"][0])) for r in chosen]

    # Free-text references dropped, or as a judge says (A's attempt at proof 6 judged right).
    chosen, report = select(tmp_path, pool, "--n", "4", "--ungradeable", "drop", out="drop.jsonl")
    assert len(chosen) == 4 and report["difficulty"]["free_text_references"] == {"dropped": 2}
    with pytest.raises(SystemExit) as e:
        select(tmp_path, pool, "--n", "5", "--ungradeable", "judge", out="judge.jsonl")
    assert e.value.code == 2 and "curate.py judge" in capsys.readouterr().err
    verdicts = [dict(id=f"{qhash(rows[i]['question'])}:{slug(m)}", verdict=v) for i, m, v in
                ((6, "m/A", "Yes"), (6, "m/B", "No"), (7, "m/A", "No"), (7, "m/B", "No"))]
    append_cache(str(tmp_path / "work" / "judge" / f"{slug(curate.JUDGE)}.jsonl"), {}, verdicts)
    chosen, report = select(tmp_path, pool, "--n", "5", "--ungradeable", "judge", out="judge.jsonl")
    questions = {r["question"] for r in chosen}
    assert rows[6]["question"] not in questions and rows[7]["question"] in questions
    assert report["difficulty"]["free_text_references"] == {"judged solved": 1, "judged unsolved": 1}


@needs_data
def test_selection_is_seeded_and_train_py_reads_it(real, tmp_path):
    from transformers import AutoTokenizer

    from data import load_sft_data
    rows = [pool_row(r["problem"], r["solution"], MATH.rsplit("/", 1)[0] + "/" + r["subject"], "?", 10 + 7 * i,
                     r["subject"]) for i, r in enumerate(real["math"][:40])]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    write_attempts(tmp_path / "work", rows, {"m/A": ["no"] * 40, "m/B": ["no"] * 40})
    a, report = select(tmp_path, pool, "--n", "12", "--long-min", "100000", out="a.jsonl")
    b, _ = select(tmp_path, pool, "--n", "12", "--long-min", "100000", out="b.jsonl")
    c, _ = select(tmp_path, pool, "--n", "12", "--long-min", "100000", "--seed", "1", out="c.jsonl")
    assert a == b and a != c and len(a) == len(c) == 12
    assert report["selected_by"] == dict(benchmark=0, diversity=12)
    assert sum(d["selected"] for d in report["per_domain"].values()) == 12
    examples, _ = load_sft_data(str(tmp_path / "a.jsonl"), AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER)), 4096)
    assert len(examples) == 12


# -----------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


@needs_data
@pytest.mark.parametrize("case, words", [
    ("no solution column", "no column 'solution'"),
    ("domain file not the MSC list", "not a domain list like the MSC2020 file"),
    ("more than survive", "only 6 questions survive the filters"),
    ("attempts missing", "no attempt of m/C at 9 questions"),
    ("no traces", "no teacher traces"),
])
def test_bad_input(real, tmp_path, capsys, case, words):
    rows, attempts = constructed_pool(real)
    write_attempts(tmp_path / "work", rows, attempts)
    rows = [{k: v for k, v in r.items() if k != "domain"} for r in rows]  # domains come from the classifier
    append_cache(str(tmp_path / "work" / "domains" / f"{slug(curate.CLASSIFIER)}.jsonl"), {},
                 [dict(id=qhash(r["question"]), domain="11") for r in rows])
    args, domains = ["--n", "6"], SHARED_DATA / "msc" / "msc2020_top_level.json"
    if case == "no solution column":
        rows = [{k: v for k, v in r.items() if k != "solution"} for r in rows]
    elif case == "domain file not the MSC list":
        domains = tmp_path / "domains.json"
        domains.write_text(json.dumps({"11": "Number theory"}))
    elif case == "more than survive":
        args = ["--n", "7"]
    elif case == "attempts missing":
        args += ["--models", "m/A,m/C"]
    elif case == "no traces":
        rows = [{k: v for k, v in r.items() if k not in ("thinking_trajectories", "attempt")} for r in rows]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    with pytest.raises(SystemExit) as e:
        curate.main(["select", "--pool", pool, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "o.jsonl"),
                     "--models", "m/A,m/B", "--tokenizer", str(QWEN_TOKENIZER), "--domains-file", str(domains), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.report.json").exists()
