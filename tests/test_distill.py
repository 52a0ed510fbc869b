"""distill.py: constrained choice against transformers, references and grading on real data, caches and
resumption, the teacher's traces in s1K-1.1's columns (read by train.py's loader), and curate.py's model
stages end to end on a CPU with a tiny random model that has the real Qwen2.5 tokenizer."""

import json
import shutil

import pytest
import torch

import curate
import distill
import sample
from conftest import QWEN_TOKENIZER, SHARED_DATA, make_tiny_checkpoint, read_jsonl, write_jsonl
from distill import CurateError, append_cache, choose, grade, qhash, read_cache, reference, slug, split_think

MSC = SHARED_DATA / "msc" / "msc2020_top_level.json"
needs_data = pytest.mark.skipif(not MSC.is_file() or not (QWEN_TOKENIZER / "tokenizer.json").is_file(),
                                reason="needs ../shared/data (the Qwen2.5 tokenizer, MATH500, AIME24, the MSC list)")


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory):
    """A random 2-layer Qwen2 with Qwen2.5's vocabulary and tokenizer (chat template, special tokens)."""
    if not (QWEN_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip("needs ../shared/data/qwen2.5-tokenizer")
    path = tmp_path_factory.mktemp("qwen_tiny")
    make_tiny_checkpoint(path, vocab_size=151936, hidden_size=32, intermediate_size=64)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=8192)))  # the domain prompt: 4K
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN_TOKENIZER / name, path / name)
    return str(path)


def test_choose_matches_transformers(tiny_checkpoint):
    """log p(option | prompt) of every option against transformers' full forward of prompt + option, with and
    without a common prefix, left padding, and options sharing first tokens (a tree of depth 3)."""
    path, ref = tiny_checkpoint
    model = sample.load_model(path, "cpu", "float32")[0]
    options = [[1, 2], [1, 3], [2, 1], [4, 5], [7], [8, 9, 10], [8, 9, 11]]
    shared = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [5, 6, 7, 8, 9, 10, 20], [5, 6, 7, 8, 9, 10, 30, 31, 32, 33, 34, 35]]
    apart = [[3] + shared[0], [4] + shared[1], [40, 41]]
    for prompts in (shared, apart):
        scores = choose(model, prompts, options)  # (B, options)
        for i, p in enumerate(prompts):
            for j, o in enumerate(options):
                with torch.no_grad():
                    logp = ref(torch.tensor([p + o])).logits[0].log_softmax(-1)
                want = sum(logp[len(p) - 1 + k, o[k]] for k in range(len(o)))
                assert scores[i, j].item() == pytest.approx(want.item(), abs=1e-4)
    with pytest.raises(ValueError):
        choose(model, shared, [[1], [1, 2]])  # "1" begins "12": no end token to compare them by


@pytest.fixture(scope="module")
def real():
    if not (SHARED_DATA / "math500").is_dir():
        pytest.skip("needs ../shared/data")
    return dict(math=read_jsonl(SHARED_DATA / "math500" / "test.jsonl"),
                aime=read_jsonl(SHARED_DATA / "aime24" / "aime24_nofigures.jsonl"),
                s1k=read_jsonl(SHARED_DATA / "s1k" / "s1k_question_solution.jsonl"))


def test_references_and_grading_on_real_data(real):
    # AIME: "025" is an integer reference, graded as an integer.
    assert reference(dict(solution=real["aime"][0]["answer"])) == (real["aime"][0]["answer"], "integer")
    assert grade("so $\\boxed{25}$", ("025", "integer"))["correct"]
    assert not grade("\\boxed{26}", ("025", "integer"))["correct"]
    # MATH500: the reference read off the solution (its last box) accepts the dataset's own answer.
    for r in real["math"][:25]:
        ref = reference(dict(solution=r["solution"]))
        assert ref[1] == "math" and grade(f"The answer is $\\boxed{{{r['answer']}}}$.", ref)["correct"], r["unique_id"]
    assert not grade("\\boxed{7}", reference(dict(solution=real["math"][2]["solution"])))["correct"]
    assert reference(dict(solution="C")) == ("C", "choice") and grade("Answer: (C)", ("C", "choice"))["correct"]
    assert reference(dict(solution="2.35")) == ("2.35", "math")
    assert reference(dict(solution="$C(4)=14$.")) == ("C(4)=14", "math")
    assert reference(dict(solution="x", answer="17")) == ("17", "integer")  # an answer column wins
    for text in ("Paris", "True", "ABC", "The tension is 5 N because ..."):
        assert reference(dict(solution=text)) is None and grade("\\boxed{1}", None)["correct"] is None
    assert "\\boxed{" in real["s1k"][0]["solution"] and "Prove" in real["s1k"][0]["question"]
    assert reference(real["s1k"][0]) is None  # a proof, though its solution boxes the claim
    assert grade("", ("3", "integer")) == dict(extracted=None, correct=False, why="no attempt")


def test_cache_keeps_finished_lines_and_refuses_other_settings(tmp_path):
    path = str(tmp_path / "c" / "m.jsonl")
    append_cache(path, dict(temperature=0.05), [dict(id="a", text="1"), dict(id="b", text="2")])
    with open(path, "a") as f:
        f.write('{"id": "c", "te')  # a crash in the middle of a line
    assert read_cache(path, dict(temperature=0.05)) == {"a": dict(id="a", text="1"), "b": dict(id="b", text="2")}
    assert open(path).read().endswith('"2"}\n')  # rewritten without the torn line, ready to append
    with pytest.raises(CurateError, match="temperature 0.05 -> 0.1"):
        read_cache(path, dict(temperature=0.1))


def test_split_think():
    assert split_think("<think>\nLet me see.\n</think>\n\nThe answer is $\\boxed{4}$.") == (
        "Let me see.", "The answer is $\\boxed{4}$.")
    assert split_think("Let me see.\n</think>\nFour.") == ("Let me see.", "Four.")  # <think> was in the prompt
    assert split_think("<think>\nLet me see. And then") is None


def fake_generate(texts, calls, crash_after=None):
    """sample.generate's stand-in: the teacher answers each prompt with texts[question], each with its own seed."""
    def generate(model, tokenizer, requests, *, on_finish, **kw):
        calls.append(len(requests))
        assert len({r["seed"] for r in requests}) == len(requests)
        out = []
        for r in requests:
            if len(out) == crash_after:
                raise KeyboardInterrupt  # the job is killed while the rest are in flight
            text = next(t for q, t in texts.items() if q in r["prompt"])
            out.append(sample.Generation(prompt=r["prompt"], text=text, thinking="", answer="", token_ids=[1] * 5,
                                         forced=[False] * 5, thinking_tokens=0, waits=0, forced_answer=False,
                                         finish_reason="stop"))
            on_finish(len(out) - 1, out[-1])
        return out
    return generate


@needs_data
def test_distill_resumes_and_train_py_reads_it(real, qwen_tiny, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    from data import load_sft_data
    rows = [dict(question=r["problem"], solution=r["solution"], source_type="math") for r in real["math"][:6]]
    rows.append(dict(question=real["aime"][0]["problem"], solution=real["aime"][0]["answer"]))
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    texts = {r["question"]: f"<think>\nThinking about it.\n</think>\n\nSo $\\boxed{{{a}}}$." for r, a in
             zip(rows, [real["math"][0]["answer"], "0", real["math"][2]["answer"], "0", "0", "0", 204])}
    texts[rows[4]["question"]] = "<think>\nThinking and thinking"  # cut off by --max-new-tokens
    argv = ["--questions", questions, "--model", qwen_tiny, "--batch-size", "3", "--device", "cpu"]

    calls = []
    monkeypatch.setattr(sample, "generate", fake_generate(texts, calls, crash_after=3))
    with pytest.raises(KeyboardInterrupt):
        distill.main(argv + ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "a.jsonl")])
    assert len(read_cache(str(tmp_path / "w" / "traces" / f"{slug(qwen_tiny)}.jsonl"))) == 3  # those finished
    assert not (tmp_path / "a.jsonl").exists()
    calls.clear()
    monkeypatch.setattr(sample, "generate", fake_generate(texts, calls))
    distill.main(argv + ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "a.jsonl")])
    assert calls == [4]  # only what was missing, in one call
    assert "right on 3 of 6 graded (50.0%), no end of thinking (left out) 1" in capsys.readouterr().out
    distill.main(argv + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "b.jsonl")])  # uninterrupted
    out = read_jsonl(tmp_path / "a.jsonl")
    assert out == read_jsonl(tmp_path / "b.jsonl") and len(out) == 6
    assert out[0]["deepseek_thinking_trajectory"] == "Thinking about it." and out[0]["deepseek_grade"] == "Yes"
    assert [r["deepseek_grade"] for r in out] == ["Yes", "No", "Yes", "No", "No", "Yes"]
    assert out[0]["teacher"] == qwen_tiny
    examples, _ = load_sft_data(str(tmp_path / "a.jsonl"), AutoTokenizer.from_pretrained(qwen_tiny), 2048)
    assert len(examples) == 6

    # Another temperature is another run: refused, not mixed in.
    with pytest.raises(SystemExit) as e:
        distill.main(argv + ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "c.jsonl"), "--temperature", "1"])
    assert e.value.code == 2 and "temperature 0.6 -> 1.0" in capsys.readouterr().err


@pytest.mark.parametrize("rows, out, words", [
    ([dict(problem="What is 1+1?")], "o.jsonl", "no column 'question'"),
    ([dict(question="What is 1+1?")], "o.csv", "give a .jsonl file"),
])
def test_distill_bad_input(tmp_path, capsys, rows, out, words):
    with pytest.raises(SystemExit) as e:
        distill.main(["--questions", write_jsonl(tmp_path / "q.jsonl", rows), "--out", str(tmp_path / out),
                      "--work", str(tmp_path / "w"), "--model", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and err.count("\n") == 1 and not (tmp_path / out).exists()


def test_teacher_settings_come_from_its_generation_config(tmp_path):
    args = distill.parse_args(["--questions", "q.jsonl", "--out", "o.jsonl", "--model", str(tmp_path)])
    assert (distill.teacher_settings(args)["temperature"], distill.teacher_settings(args)["top_p"]) == (0.6, 0.95)
    (tmp_path / "generation_config.json").write_text(json.dumps(dict(temperature=0.7, top_p=0.9)))
    assert (distill.teacher_settings(args)["temperature"], distill.teacher_settings(args)["top_p"]) == (0.7, 0.9)
    args.temperature = 0.5
    assert distill.teacher_settings(args)["temperature"] == 0.5


@needs_data
def test_model_stages_end_to_end_on_cpu(real, qwen_tiny, tmp_path, capsys):
    """attempts, judge, domains, select and distill, each through the real model code: a random model's output
    is garbage, so this checks the plumbing (caches, constrained choice, resumption, refusals), not the grades."""
    rows = [dict(question=r["problem"], solution=r["solution"], source_type="qfq/openaimath",
                 thinking_trajectories=["Think " * (5 + i)], attempt="\\boxed{0}")
            for i, r in enumerate(real["math"][:3])]
    rows.append(dict(question=real["s1k"][0]["question"], solution=real["s1k"][0]["solution"], source_type="numina",
                     thinking_trajectories=["A proof."], attempt="Proof."))  # a free-text reference
    pool, work = write_jsonl(tmp_path / "pool.jsonl", rows), str(tmp_path / "w")
    common = ["--pool", pool, "--work", work, "--model", qwen_tiny, "--device", "cpu", "--batch-size", "2"]
    curate.main(["attempts", *common, "--max-new-tokens", "4"])
    attempts = read_cache(f"{work}/attempts/{slug(qwen_tiny)}.jsonl")
    assert len(attempts) == 4 and [a["correct"] for a in attempts.values()].count(None) == 1
    curate.main(["attempts", *common, "--max-new-tokens", "4"])
    assert "0 questions to answer, 4 already in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        curate.main(["attempts", *common, "--max-new-tokens", "5"])
    assert e.value.code == 2 and "max_new_tokens 4 -> 5" in capsys.readouterr().err

    curate.main(["judge", *common, "--models", qwen_tiny])  # the free-text question: the model's and the teacher's
    verdicts = read_cache(f"{work}/judge/{slug(qwen_tiny)}.jsonl")
    assert sorted(verdicts) == sorted(f"{qhash(rows[3]['question'])}:{who}" for who in (slug(qwen_tiny), "teacher"))
    assert {v["verdict"] for v in verdicts.values()} <= {"Yes", "No"}
    curate.main(["domains", *common, "--domains-file", str(MSC)])
    codes = {d["code"] for d in json.loads(MSC.read_text())}
    domains = read_cache(f"{work}/domains/{slug(qwen_tiny)}.jsonl")
    assert len(domains) == 4 and all(d["domain"] in codes for d in domains.values())

    curate.main(["select", "--pool", pool, "--work", work, "--out", str(tmp_path / "s.jsonl"), "--n", "3",
                 "--models", qwen_tiny, "--ungradeable", "judge", "--judge-model", qwen_tiny,
                 "--domain-model", qwen_tiny, "--domains-file", str(MSC), "--tokenizer", str(QWEN_TOKENIZER)])
    chosen = read_jsonl(tmp_path / "s.jsonl")
    assert len(chosen) == 3 and all(r["domain"].split()[0] in codes for r in chosen)

    # A random teacher never closes </think>: nothing to write, and nothing written.
    with pytest.raises(SystemExit) as e:
        distill.main(["--questions", str(tmp_path / "s.jsonl"), "--model", qwen_tiny, "--device", "cpu", "--work", work,
                      "--out", str(tmp_path / "d.jsonl"), "--max-new-tokens", "4"])
    assert e.value.code == 2 and "no trace" in capsys.readouterr().err and not (tmp_path / "d.jsonl").exists()
    assert len(read_cache(f"{work}/traces/{slug(qwen_tiny)}.jsonl")) == 3  # but the traces are kept
