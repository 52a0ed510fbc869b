"""data.py: s1 formatting against the real Qwen2.5 chat template, label masks, truncation, order, errors."""

import json
import random
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, write_jsonl
from data import (ASSISTANT_HEADER, IGNORE, DataError, assistant_turn, build_examples, collate, epoch_order,
                  global_batch_ids, load_rows, load_sft_data, rank_micro_batches, render, steps_per_epoch,
                  tokenize, truncate)

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5's chat template without the tool branches: default system prompt when none is given.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def make_byte_tokenizer(path):
    """A byte-level tokenizer (256 bytes + Qwen's three special tokens) with a Qwen-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_TEMPLATE
    fast.save_pretrained(str(path))
    return str(path)


def s1k_rows(n, seed=0):
    """s1K-format rows about small sums: a thinking list (as s1K's Gemini traces) and an attempt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        thinking = [f"{a}+{b}: {a + b}."] + ["Check."] * rng.randint(0, 6)
        rows.append(dict(question=f"What is {a}+{b}?", thinking_trajectories=thinking,
                         attempt=f"{a + b}" if rng.random() < 0.5 else f"Answer: {a + b}"))
    return rows


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(make_byte_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer"))


def test_format_matches_real_chat_template(qwen_tokenizer):
    q = "Find $x$ if $2x=6$."
    for thinking, attempt, answer in [
            (["First, divide.", "  So x=3.  "], "x = 3", "Answer: x = 3"),  # s1K: a list of strings
            ("Divide by two: x=3.\n", "The answer is x=3.\nAnswer: 3", "The answer is x=3.\nAnswer: 3")]:  # s1K-1.1
        prompt, full = render(qwen_tokenizer, q, thinking, attempt)
        joined = "\n".join(thinking) if isinstance(thinking, list) else thinking
        want = ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n" + q + "<|im_end|>\n"
                "<|im_start|>assistant\n<|im_start|>think\n" + joined.strip() + "\n<|im_start|>answer\n" + answer
                + "<|im_end|>\n")
        assert full == want
        # the reference: the real template applied to the s1 assistant string
        s1_assistant = "<|im_start|>think\n" + joined.strip() + "\n<|im_start|>answer\n" + answer
        ref = qwen_tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": s1_assistant}], tokenize=False)
        assert full == ref and prompt == want[:want.index(ASSISTANT_HEADER) + len(ASSISTANT_HEADER)]


def test_label_mask_on_real_tokenizer(qwen_tokenizer):
    prompt, full = render(qwen_tokenizer, "What is 1+1?", ["One plus one.", "Two."], "2")
    ids, n_prompt = tokenize(qwen_tokenizer, prompt, full)
    # S1_NOTES token ids: the prompt ends with <|im_start|>assistant\n, thinking opens with <|im_start|>think
    assert ids[n_prompt - 3:n_prompt + 2] == [151644, 77091, 198, 151644, 26865]
    x, y = collate([(ids, n_prompt)], [0])
    assert x.shape == y.shape == (1, len(ids) - 1)
    assert x[0].tolist() == ids[:-1]
    trained = [t for t in y[0].tolist() if t != IGNORE]
    assert trained == ids[n_prompt:]  # everything after the assistant header, nothing before
    text = qwen_tokenizer.decode(trained)
    assert text == "<|im_start|>think\nOne plus one.\nTwo.\n<|im_start|>answer\nAnswer: 2<|im_end|>\n"
    assert 151645 in trained and (y[0, :n_prompt - 1] == IGNORE).all()


def test_stats_on_shared_questions(qwen_tokenizer, tmp_path):
    from conftest import SHARED_DATA
    src = SHARED_DATA / "s1k" / "s1k_question_solution.jsonl"
    if not src.is_file():
        pytest.skip("needs ../shared/data/s1k")
    rows = [json.loads(line) for line in open(src)][:20]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    r = subprocess.run([sys.executable, str(ROOT / "data.py"), "stats", "--data", data, "--tokenizer",
                        str(qwen_tokenizer.name_or_path), "--thinking-column", "solution", "--answer-column",
                        "solution", "--block-size", "512"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # the count of sequences over the block size, recomputed independently with the reference template
    over = 0
    for row in rows:
        text = qwen_tokenizer.apply_chat_template(
            [{"role": "user", "content": row["question"]},
             {"role": "assistant", "content": assistant_turn(row["solution"], row["solution"])}], tokenize=False)
        over += len(qwen_tokenizer(text, add_special_tokens=False)["input_ids"]) > 512
    assert ": 20 examples" in r.stdout and f"{over} of 20 exceed block size 512" in r.stdout


def test_answer_prefix_rule():
    assert assistant_turn("t", "42").endswith("\n<|im_start|>answer\nAnswer: 42")
    assert assistant_turn("t", "So the Answer: 42 ").endswith("\n<|im_start|>answer\nSo the Answer: 42")
    assert assistant_turn(["a ", "b"], "1").startswith("<|im_start|>think\na \nb\n")


def test_collate_pads_and_masks(byte_tokenizer, tmp_path):
    examples = build_examples(load_rows(write_jsonl(tmp_path / "d.jsonl", s1k_rows(3))), byte_tokenizer)
    short = (examples[0][0][:examples[0][1] + 5], examples[0][1])
    x, y = collate([examples[1], short], [0, 1])
    T = len(examples[1][0]) - 1
    assert x.shape == (2, T)
    assert (y[1, examples[0][1] + 4:] == IGNORE).all()  # padding is never a target
    assert (y[1] != IGNORE).sum() == 5 and (y[0] != IGNORE).sum() == len(examples[1][0]) - examples[1][1]


def test_text_column_and_jsonl_vs_parquet(byte_tokenizer, tmp_path):
    rows = s1k_rows(4)
    want = build_examples(load_rows(write_jsonl(tmp_path / "a.jsonl", rows)), byte_tokenizer)
    texts = [render(byte_tokenizer, r["question"], r["thinking_trajectories"], r["attempt"])[1] for r in rows]
    got = build_examples(load_rows(write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])), byte_tokenizer)
    assert got == want
    import datasets
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    assert build_examples(load_rows(str(tmp_path / "a.parquet")), byte_tokenizer) == want


def test_column_choice(byte_tokenizer, tmp_path):
    rows = [dict(question="Q?", thinking_trajectories=["gemini"], attempt="g",
                 deepseek_thinking_trajectory="deepseek", deepseek_attempt="d")]
    path = write_jsonl(tmp_path / "11.jsonl", rows)
    ids, n = build_examples(load_rows(path), byte_tokenizer)[0]  # s1K-1.1: DeepSeek's by default
    assert byte_tokenizer.decode(ids[n:]).startswith("<|im_start|>think\ndeepseek\n<|im_start|>answer\nAnswer: d")
    ids, n = build_examples(load_rows(path), byte_tokenizer, thinking_column="thinking_trajectories")[0]
    assert byte_tokenizer.decode(ids[n:]).startswith("<|im_start|>think\ngemini\n<|im_start|>answer\nAnswer: g")


def test_truncation_report(byte_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", s1k_rows(6))
    full = build_examples(load_rows(path), byte_tokenizer)
    block = sorted(len(ids) for ids, _ in full)[2]  # so that about three are longer
    cut, report = load_sft_data(path, byte_tokenizer, block)
    assert all(len(ids) <= block for ids, _ in cut)
    assert report["truncated"] == sum(len(ids) > block for ids, _ in full) >= 1
    assert report["tokens_lost"] == sum(len(ids) for ids, _ in full) - sum(len(ids) for ids, _ in cut)
    longest_prompt = max(n for _, n in full)
    with pytest.raises(DataError, match=f"shorter than the prompt.*--block-size {longest_prompt + 1}"):
        truncate(full, longest_prompt)
    truncate(full, longest_prompt + 1)  # one trained token is enough


def test_order_is_deterministic_and_split_across_ranks():
    n, G = 37, 8
    spe = steps_per_epoch(n, G)
    assert spe == 5 and steps_per_epoch(1000, 16) == 63  # s1: 63 steps per epoch, 315 in 5
    assert epoch_order(n, 0, 1) == epoch_order(n, 0, 1) and epoch_order(n, 0, 1) != epoch_order(n, 1, 1)
    assert epoch_order(n, 0, 1) != epoch_order(n, 0, 2)
    for epoch in range(2):
        seen = [i for s in range(epoch * spe, (epoch + 1) * spe) for i in global_batch_ids(s, n, G, 1)]
        assert len(seen) == spe * G and set(seen) == set(range(n))  # every example each epoch; the tail padded
        assert seen[:n] == epoch_order(n, epoch, 1)
    batch = global_batch_ids(3, n, G, 1)
    parts = [rank_micro_batches(batch, r, 2, 2) for r in range(2)]
    assert all(len(p) == 2 and all(len(m) == 2 for m in p) for p in parts)  # 2 ranks x 2 micro x 2 accum
    assert sorted(i for p in parts for m in p for i in m) == sorted(batch)
    with pytest.raises(DataError, match="not a multiple"):
        rank_micro_batches(batch, 0, 3, 1)


def test_group_by_length_pads_less_and_keeps_every_example():
    # 2 lengths, as the tiny task's (a check or none): random batches nearly always hold a long one, grouped
    # batches are nearly all of one length. Every epoch still sees every example once, in a fresh order.
    n, G = 1003, 16
    rng = torch.Generator().manual_seed(0)
    lengths = tuple((torch.rand(n, generator=rng) < 0.4).long().mul(60).add(50).tolist())  # 50 or 110
    spe = steps_per_epoch(n, G)

    def mean_padded_length(seed, grouped):
        batches = [global_batch_ids(s, n, G, seed, lengths if grouped else None) for s in range(spe)]
        return sum(max(lengths[i] for i in b) for b in batches) / spe

    assert mean_padded_length(1, False) > 105 and mean_padded_length(1, True) < 80
    for epoch in range(2):
        order = epoch_order(n, epoch, 1, lengths, G)
        seen = [i for s in range(epoch * spe, (epoch + 1) * spe) for i in global_batch_ids(s, n, G, 1, lengths)]
        assert sorted(order) == list(range(n)) and seen[:n] == order
        assert seen[n:] == order[:spe * G - n]  # the short last batch is last, filled from the epoch's start
    assert epoch_order(n, 0, 1, lengths, G) != epoch_order(n, 1, 1, lengths, G) != epoch_order(n, 1, 2, lengths, G)
    # the batches come in random order, not longest first
    firsts = [max(lengths[i] for i in global_batch_ids(s, n, G, 1, lengths)) for s in range(50)]
    assert 10 < firsts.count(110) < 40


def test_bad_data_errors(byte_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "attempt": "a"}])
    with pytest.raises(DataError, match=r"q\.jsonl: no column 'thinking_trajectories'"):
        build_examples(load_rows(path), byte_tokenizer, source=path)
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "q", "deepseek_thinking_trajectory": "t"}])
    with pytest.raises(DataError, match=r"s\.jsonl: no column 'deepseek_attempt'"):
        build_examples(load_rows(path), byte_tokenizer, source=path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        load_rows(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "missing.jsonl"))
    path = write_jsonl(tmp_path / "n.jsonl", [dict(question="q", thinking_trajectories=["t"], attempt="")])
    with pytest.raises(DataError, match="row 0: column 'attempt' is empty"):
        build_examples(load_rows(path), byte_tokenizer, source=path)


def test_stats_cli_errors_in_one_line(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q"}])
    tok = make_byte_tokenizer(tmp_path / "tok")
    r = subprocess.run([sys.executable, str(ROOT / "data.py"), "stats", "--data", path, "--tokenizer", tok],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "q.jsonl: no column" in r.stderr
