"""
The tiny CPU run of issue 6: its data, its tokenizer, and the whole recipe end to end, shortened.

The sums are checked against Python's integers, the tokenizer against transformers' loading of it and
against the real Qwen2.5 tokenizer (byte ids, chat template; skipped where ../shared is absent), and the
end-to-end run goes through the real command lines: tiny.py, train.py --tiny (a smaller model and a
few hundred steps), sample.py --wait 2, eval.py --tasks tiny.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

import data
import sample
import tiny

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def operands(question):
    a, b = re.fullmatch(r"What is (\d{3}) plus (\d{3})\?", question).groups()
    return int(a), int(b)


def carry_free_sum(a, b):
    """The sum with every carry dropped."""
    return sum((a // 10 ** i + b // 10 ** i) % 10 * 10 ** i for i in range(3))


def expected_check(a, b):
    """The column-by-column check of a + b, written out here with Python's integers."""
    lines, carry = ["Wait, let me add column by column."], 0
    for i, name in enumerate(("ones", "tens", "hundreds")):
        x, y = a // 10 ** i % 10, b // 10 ** i % 10
        lines.append(f"{name}: {x}+{y}+{carry}={x + y + carry:02d}")
        carry = (x + y + carry) // 10
    return "\n".join(lines + [f"Column sum: {a + b}."])


def test_rows_are_s1k_rows_whose_checks_add_up():
    train, test = tiny.dataset(3000, 100, seed=1)
    kinds = dict.fromkeys(["glance right", "glance wrong", "checked", "confirmed", "answered wrong"], 0)
    checked_when = dict(right=[], wrong=[])
    for r in train:
        assert set(r) >= {"question", "thinking_trajectories", "attempt"}
        a, b = operands(r["question"])
        first_line, _, rest = r["thinking_trajectories"][0].partition("\n")
        assert first_line == "Quick sum."  # no digits before the check: it must add what it copies
        glance = carry_free_sum(a, b)  # a glance adds every column and drops every carry
        kinds["glance right" if glance == a + b else "glance wrong"] += 1
        stated, check = glance, expected_check(a, b)
        assert rest in ("", check, check + "\nWait, that is right."), rest  # no check, or the whole check
        if rest:
            kinds["checked"] += 1
            kinds["confirmed"] += rest != check
            stated = a + b
        checked_when["right" if glance == a + b else "wrong"].append(bool(rest))
        assert r["attempt"] == f"Final Answer: {stated}" and r["answer"] == str(a + b)
        kinds["answered wrong"] += stated != a + b
    # The hasty solver: right and wrong glances, checks (some confirmed by a second Wait), wrong answers.
    assert all(kinds[k] > 0.05 * len(train) for k in kinds) and kinds["glance wrong"] > 0.3 * len(train), kinds
    # Under half the traces check, whatever their glance: a greedy model never checks by itself.
    for glance, checks in checked_when.items():
        assert abs(sum(checks) / len(checks) - tiny.CHECK) < 0.05 and tiny.CHECK < 0.5, glance
    held_out = {operands(r["problem"]) for r in test}
    assert len(held_out) == len(test) == 100 and all(r["answer"] == str(sum(operands(r["problem"]))) for r in test)
    assert not held_out & {operands(r["question"]) for r in train}
    assert not held_out & {operands(r["question"])[::-1] for r in train}
    assert tiny.dataset(50, 10, seed=1) == tiny.dataset(50, 10, seed=1) != tiny.dataset(50, 10, seed=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"  # laid out as eval.py's --data-dir expects
    run([sys.executable, "tiny.py", "--out", str(out), "--n-train", "1000", "--n-test", "16"])
    return out


def run(cmd, **kw):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_tokenizer_loads_in_transformers_and_keeps_digits_and_wait_whole(tiny_dir, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, Qwen2Config

    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer" / "tokenizer.json"))
    # Beside a Qwen2 config.json (a checkpoint), transformers rebuilds the tokenizer from vocab + merges
    # with Qwen's own pre-tokenizer; alone, it takes tokenizer.json as it is. Both must be the same.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir / "tokenizer", ckpt)
    Qwen2Config(vocab_size=384, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                num_key_value_heads=1).save_pretrained(ckpt)
    toks = [AutoTokenizer.from_pretrained(tiny_dir / "tokenizer"), AutoTokenizer.from_pretrained(ckpt)]
    rows = [json.loads(line) for line in open(tiny_dir / "train.jsonl")][:50]
    texts = [data.render(toks[0], r["question"], r["thinking_trajectories"], r["attempt"])[1] for r in rows]
    texts += ["How many r in raspberry?", "Wäit, naïve 日本 🙂\t\r\n  x", "<|im_start|>think\nWait", "isn't 12,345.6"]
    for tok in toks:
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False)
            assert ids == raw.encode(text).ids, (type(tok).__name__, text)
            assert tok.decode(ids) == text  # byte-level: nothing is lost, whatever the text
        assert len(tok.encode("Wait", add_special_tokens=False)) == 1
        assert tok.encode("<|im_start|>think", add_special_tokens=False) == tok.convert_tokens_to_ids(["<|im_start|>", "think"])
        assert tok.tokenize("What is 347 plus 285?") == ["What", "Ġis", "Ġ", "3", "4", "7", "Ġplus", "Ġ", "2", "8", "5", "?"]
        assert tok.convert_tokens_to_ids(tiny.SPECIAL_TOKENS) == [len(tok) - 3, len(tok) - 2, len(tok) - 1]
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # The training rows go through data.py's s1 formatting: the prompt's tokens prefix the full text's.
    examples = data.build_examples(data.load_rows(str(tiny_dir / "train.jsonl")), toks[1])
    assert len(examples) == 1000 and all(0 < n < len(ids) for ids, n in examples)


def test_tokenizer_matches_qwen_bytes_and_chat_template(tiny_dir, qwen_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    # The 256 byte symbols have Qwen2.5's ids ("\n" is 198), so byte-level text lines up with Qwen's.
    symbols = list(tiny.byte_symbols().values())
    assert tok.convert_tokens_to_ids(symbols) == qwen_tokenizer.convert_tokens_to_ids(symbols) == list(range(256))
    conversations = [
        [{"role": "user", "content": "What is 347 plus 285?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1+2?"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "r"}],
    ]
    for messages in conversations:
        for gen in (False, True):
            ours = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            qwen = qwen_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours == qwen.replace(QWEN_SYSTEM, tiny.SYSTEM)


def test_data_command_refuses_bad_counts(tmp_path):
    p = subprocess.run([sys.executable, "tiny.py", "--out", str(tmp_path / "d"), "--n-train", "0"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--n-train" in p.stderr
    assert not (tmp_path / "d").exists()


def scripted_solver(tok, rows, checks: bool):
    """
    A stand-in for a trained model (tests/test_sample.py's ScriptedLM) that writes what the tiny task
    taught: "Quick sum.", then it would stop. After the forced Wait a solver that learned the check
    (checks=True) adds column by column and answers the sum; one that did not says "that is right" and
    answers at a glance.
    """
    from test_sample import ScriptedLM

    im_start, im_end, answer = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "answer"])
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    prompts, scripts = [], []
    for r in rows:
        a, b = operands(r["problem"])
        glance = carry_free_sum(a, b)
        said = a + b if checks else glance
        # What follows the forced "Wait" (the next token may not end thinking again): the check, or
        # a confirmation.
        check = expected_check(a, b) if checks else "Wait, that is right."
        check = check.removeprefix("Wait") + "\n"
        # Each <|im_start|> is where the model would end its thinking: the first gets the Wait instead,
        # the second the forced "<|im_start|>answer" (two tokens, so "answer" stands in the script too).
        scripts.append(enc("\nQuick sum.\n") + [im_start] + enc(check) + [im_start, answer]
                       + enc(f"\nFinal Answer: {said}") + [im_end])
        prompts.append(enc(sample.build_prompt(tok, r["problem"])))
    return ScriptedLM(prompts, scripts, vocab_size=384)


def test_self_check_passes_a_model_that_checks_and_fails_one_that_does_not(tiny_dir, monkeypatch):
    """The verdict and its counting, through sample.py's real decoding with a forced Wait. The stand-in
    models write scripted text (no model learns in a test's time); a real unlearned run is below."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    rows = [json.loads(line) for line in open(tiny_dir / "test.jsonl")]
    data_file = str(tiny_dir / "train.jsonl")
    carry_free = sum(carry_free_sum(*operands(r["problem"])) == int(r["answer"]) for r in rows)
    for checks, right in ((True, len(rows)), (False, carry_free)):
        model = scripted_solver(tok, rows, checks)
        assert tiny.self_check(model, tok, rows) == right
        monkeypatch.setattr(sample, "load_model", lambda path: (scripted_solver(tok, rows, checks), tok))
        line = tiny.self_check_report("out/x", data_file, seed=7)
        assert f" {right} of {len(rows)} held-out sums right with one Wait" in line
        if checks:
            assert "learned its check" in line and "did not" not in line
        else:
            assert "did not learn" in line and "--seed 8 --out-dir out/x-8" in line
    assert 0 < carry_free < tiny.SELF_CHECK_PASS * len(rows)  # so the glance alone fails the self-check
    assert "skipped" in tiny.self_check_report("out/x", str(tiny_dir / "nowhere" / "train.jsonl"), seed=7)


def test_a_run_of_a_few_steps_says_it_did_not_learn(tiny_dir, tmp_path):
    """train.py --tiny ends with the self-check; two steps of training cannot have learned the check."""
    p = run([sys.executable, "train.py", "--tiny", "--data", str(tiny_dir / "train.jsonl"), "--tokenizer",
             str(tiny_dir / "tokenizer"), "--out-dir", str(tmp_path / "m"), "--n-layer", "1", "--n-embd", "32",
             "--n-head", "2", "--n-kv-head", "1", "--mlp", "64", "--epochs", "1", "--global-batch", "512",
             "--micro-batch", "512", "--log-every", "100"])
    last = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"self-check: only \d+ of 16 held-out sums right with one Wait: this run did not learn .*"
                        r"`python train\.py --tiny --seed 43 --out-dir \S+-43`", last), last


def test_the_whole_recipe_end_to_end(tiny_dir, tmp_path):
    """CI's shortened first run: data, train from scratch, sample with Wait, eval; every file written."""
    out, ev = tmp_path / "model", tmp_path / "eval"
    trained = run([sys.executable, "train.py", "--tiny", "--data", str(tiny_dir / "train.jsonl"), "--tokenizer",
                   str(tiny_dir / "tokenizer"), "--out-dir", str(out), "--n-layer", "2", "--n-embd", "64",
                   "--mlp", "192", "--epochs", "4", "--global-batch", "16", "--micro-batch", "16", "--lr", "3e-3",
                   "--log-every", "50"])
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert len(log) == 4 * 63  # 4 epochs of ceil(1000 / 16) steps (the last batch is filled up)
    first, last = (sum(r["loss"] for r in part) / len(part) for part in (log[:10], log[-10:]))
    assert last < 0.25 * first, (first, last)
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name

    # transformers loads the export and computes the same logits as model.py
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model import Qwen2
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 123 plus 456?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    ref = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(Qwen2.from_pretrained(str(out))(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)

    p = run([sys.executable, "sample.py", "--model", str(out), "--wait", "2", "--max-new-tokens", "200", "--json",
             "What is 123 plus 456?"])
    g = json.loads(p.stdout.strip().splitlines()[-1])
    assert g["waits"] == 2 and g["thinking"].count("Wait") >= 2 and g["finish_reason"] == "stop"
    assert g["thinking_tokens"] > 0 and re.search(r"Final Answer: \d+", g["answer"])

    run([sys.executable, "eval.py", "--model", str(out), "--tasks", "tiny", "--data-dir", str(tiny_dir.parent),
         "--budgets", "4,none", "--waits", "0,1", "--batch-size", "16", "--out", str(ev)])
    results = json.load(open(ev / "results.json"))["tasks"]["tiny"]["bf"]
    samples = [json.loads(line) for line in open(ev / "samples.jsonl")]
    assert len(samples) == 16 * 4 and results["control"] == 100.0
    capped = results["settings"]["budget=4,wait=1"]
    assert capped["n"] == 16 and capped["thinking_tokens_mean"] <= 4 and capped["hit_budget"] == 16
    assert results["settings"]["budget=none,wait=1"]["waits_mean"] == 1
    # The run's own self-check (its last line) on the same sums agrees with eval.py's grader.
    line = trained.stdout.splitlines()[-1]
    right = sum(s["correct"] for s in samples if s["setting"] == "budget=none,wait=1")
    assert re.match(r"self-check: (only )?\d+ of 16 held-out sums right with one Wait", line), line
    assert ("learned its check" in line) == (right >= tiny.SELF_CHECK_PASS * 16), (line, right)
