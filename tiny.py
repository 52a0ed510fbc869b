"""
The tiny s1: a reasoning task small enough to train a model from scratch on a laptop CPU in minutes.

It is written as s1K rows, so that the very same train.py / sample.py / eval.py run on it: add two
3-digit numbers. Every thinking trace is a hasty solver's. It thinks "Quick sum." and would answer at
a glance, adding each column's digits and dropping every carry ("What is 347 plus 285?" "Final Answer:
522"), which is right for the third of the sums that have no carry. In 4 traces of 10 it first writes
"Wait", adds column by column with the carries and answers with the checked sum (and a few checks end
with a second "Wait, that is right."); otherwise it answers at a glance, so about 4 training answers in
10 are wrong, as a hasty solver's would be. Whether a trace checks does not depend on its problem, and
fewer than half do, so a greedy model never checks by itself: budget forcing decides. Forcing "Wait"
where it would stop makes it check; a thinking budget that cuts the check off before its sum leaves the
model nothing better than a guess. Every trace has one layout (3-digit operands, sums below 1000,
two-digit column sums, each column named), so the digits a line adds are easy to find.

The glance is not written in the thinking, on purpose. When it was ("Quick sum: 522.", until 2026-12-02),
its digits were the check's without the carries, and a model could learn the check's sums from the
glance above them instead of from the digits it had just copied: in one run of four or five it did, never
learned to add the question's digits for the glance itself, and then checked a wrong glance into a
wrong sum (2.5% with a Wait). With nothing to lean on, the check has to add what it copied. A 0.8M-
parameter model learns to copy the digits early and the digit sums later, at a different step for every
seed (and every CPU's rounding); the README gives the seeds measured, and the self-check at the end of
`train.py --tiny` tells a run that did not learn.

Also here: the tokenizer (Qwen2.5's, with a vocabulary of a few words) and the self-check that ends
`train.py --tiny`. What it leaves out: any arithmetic beyond 3-digit sums.

    python tiny.py      # data/tiny/train.jsonl, test.jsonl (held-out problems), tokenizer/
"""

import argparse
import json
import os
import random
import re
import sys

from model import atomic_write, dump_json  # files written whole or not at all

OUT = "data/tiny"
N_TRAIN, N_TEST, SEED = 15000, 200, 0
CHECK = 0.4  # the share of traces that check their glance: under half, so greedy decoding never does
TWICE = 0.3  # checks that end with a second "Wait" confirming the sum
COLUMNS = ("ones", "tens", "hundreds")  # the check's lines, right to left
# The self-check at the end of `train.py --tiny`: held-out sums answered with one Wait, and the share to pass.
# With an earlier recipe (the glance in the thinking) the runs that got 95% or more of all 200 got 94 to 100
# of these 100 and the two of ten that fell short 82 (84% of all 200) and 40 (43.5%), so 90 is the line; ten
# seeds of this recipe all got 97 to 100. 20 sums were too few (with an earlier recipe still, a run right on
# 75% of all 200 got 19 of the first 20).
SELF_CHECK_SUMS = 100
SELF_CHECK_PASS = 0.9
SYSTEM = "You are a tiny model that adds numbers."  # the chat template's default system prompt
# The words the tokenizer keeps whole ("Wait" among them), with and without a leading space. Digits are
# single tokens anyway: Qwen2.5's pre-tokenizer splits every digit off on its own.
WORDS = ("system user assistant think answer Wait You are tiny model that adds numbers What is plus Quick "
         "sum let me add column by ones tens hundreds Column that right Final Answer").split()
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # Qwen2.5's, in its order, after the rest
# Qwen2.5's pre-tokenizer split: every digit alone, a word with its leading space, punctuation runs.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5's chat template without the tool-calling branch, with the tiny model's default system prompt.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


# -----------------------------------------------------------------------------
# The task: sums and a hasty solver's thinking


def question(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


def problem(rng) -> tuple[int, int]:
    a = rng.randrange(100, 900)
    return a, rng.randrange(100, 1000 - a)  # the sum stays below 1000: three digits, like the operands


def example(a: int, b: int, rng) -> dict:
    """One s1K-format row: question, thinking trajectory (maybe with the check), attempt (glance or checked sum)."""
    x, y = [a // 10 ** i % 10 for i in range(3)], [b // 10 ** i % 10 for i in range(3)]  # ones first
    glance = sum((x[i] + y[i]) % 10 * 10 ** i for i in range(3))  # each column's digits, every carry dropped
    carry, columns = 0, []
    for i in range(3):
        s = x[i] + y[i] + carry
        columns.append(f"{COLUMNS[i]}: {x[i]}+{y[i]}+{carry}={s:02d}")
        carry = s // 10
    thinking, answer = "Quick sum.", glance  # the glance is only in the answer: no digits for the check to lean on
    if rng.random() < CHECK:
        check = ["Wait, let me add column by column.", *columns, f"Column sum: {a + b}."]
        if rng.random() < TWICE:
            check.append("Wait, that is right.")
        thinking, answer = "\n".join([thinking, *check]), a + b
    return dict(question=question(a, b), thinking_trajectories=[thinking],
                attempt=f"Final Answer: {answer}", answer=str(a + b))


def dataset(n_train=N_TRAIN, n_test=N_TEST, seed=SEED) -> tuple[list, list]:
    """(training rows, test rows); no test problem is in the training rows, in either order."""
    rng = random.Random(seed)
    test = {}
    while len(test) < n_test:
        test.setdefault(problem(rng))
    train = []
    while len(train) < n_train:
        a, b = problem(rng)
        if (a, b) not in test and (b, a) not in test:
            train.append(example(a, b, rng))
    return train, [dict(id=str(i), problem=question(a, b), answer=str(a + b)) for i, (a, b) in enumerate(test)]


# -----------------------------------------------------------------------------
# The tokenizer: Qwen2.5's, built the same way from a vocabulary of a few words


def build_tokenizer():
    """
    A byte-level BPE tokenizer built as Qwen2.5's is: NFC, Qwen2.5's pre-tokenizer (every digit alone,
    words with their leading space), the 256 byte symbols first in GPT-2's order (so "\\n" is id 198 as in
    Qwen), merges, then the special tokens. The merges are learned with the tokenizers library from the
    words of WORDS alone, so each of those words is one token and any other text still encodes (as
    bytes). transformers rebuilds a Qwen2 checkpoint's tokenizer from vocab + merges with Qwen's own
    pre-tokenizer, which is this one: so it reads this tokenizer exactly as it was built.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),  # Qwen2.5's split
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    alphabet = list(byte_symbols().values())
    trainer = trainers.BpeTrainer(vocab_size=4096, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([w for word in WORDS for w in (word, " " + word)], trainer)
    # The trainer lists the alphabet in its own order; put the bytes in GPT-2's, keep the merges.
    learned = json.loads(tok.to_str())["model"]
    vocab = {s: i for i, s in enumerate(alphabet)}
    for s in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(s, len(vocab))
    tok.model = models.BPE(vocab=vocab, merges=[tuple(m) for m in learned["merges"]])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def byte_symbols() -> dict:
    """GPT-2's printable stand-in for every byte ({byte: symbol}, what ByteLevel writes), in GPT-2's id
    order: so "\\n" is id 198 and " " id 220 here, as in Qwen2.5."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def save_tokenizer(tok, out_dir: str):
    """tokenizer.json and tokenizer_config.json (special tokens, chat template), as Qwen2.5 ships them."""
    os.makedirs(out_dir, exist_ok=True)
    added = {str(tok.token_to_id(t)): dict(content=t, lstrip=False, normalized=False, rstrip=False,
                                           single_word=False, special=True) for t in SPECIAL_TOKENS}
    config = dict(tokenizer_class="Qwen2Tokenizer", added_tokens_decoder=added, bos_token=None,
                  eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                  additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHAT_TEMPLATE,
                  add_bos_token=False, add_prefix_space=False, clean_up_tokenization_spaces=False,
                  errors="replace", model_max_length=512, split_special_tokens=False)
    atomic_write(os.path.join(out_dir, "tokenizer.json"), tok.save)
    atomic_write(os.path.join(out_dir, "tokenizer_config.json"), lambda p: dump_json(config, p))


# -----------------------------------------------------------------------------
# The self-check at the end of `train.py --tiny`: did this run learn to check?


def self_check(model, tokenizer, rows) -> int:
    """How many of the held-out sums `rows` the model answers right, greedily, with one forced Wait."""
    from sample import generate  # sample.py decodes; only a finished run gets this far

    # A check is under 100 tokens; a model that never learned to stop is cut off well before its context.
    gens = generate(model, tokenizer, [r["problem"] for r in rows], wait=1, max_new_tokens=200)
    answers = [re.search(r"Final Answer:\s*(\d+)", g.answer) for g in gens]
    return sum(m is not None and m.group(1) == r["answer"] for m, r in zip(answers, rows))


def self_check_report(model_dir: str, data_file: str, seed: int) -> str:
    """One line for the end of `train.py --tiny`: whether the model learned its check, and if not, what to do."""
    from sample import load_model

    test_file = os.path.join(os.path.dirname(data_file), "test.jsonl")
    if not os.path.isfile(test_file):
        return f"self-check skipped: no held-out sums at {test_file} (`python tiny.py` writes them beside train.jsonl)"
    with open(test_file) as f:
        rows = [json.loads(line) for line in f][:SELF_CHECK_SUMS]
    right = self_check(*load_model(model_dir), rows)
    if right >= SELF_CHECK_PASS * len(rows):
        return f"self-check: {right} of {len(rows)} held-out sums right with one Wait: the model learned its check"
    return (f"self-check: only {right} of {len(rows)} held-out sums right with one Wait: this run did not learn "
            f"the column check (an unlucky seed); train again with another seed, e.g. `python train.py --tiny "
            f"--seed {seed + 1} --out-dir {model_dir}-{seed + 1}`")


# -----------------------------------------------------------------------------
# Command line: write the data and the tokenizer


def main(argv=None):
    p = argparse.ArgumentParser(description="write the tiny addition task: training rows in s1K format, "
                                "held-out test problems and a tokenizer")
    p.add_argument("--out", default=OUT)
    p.add_argument("--n-train", type=int, default=N_TRAIN)
    p.add_argument("--n-test", type=int, default=N_TEST)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    if args.n_train < 1 or args.n_test < 1:
        print(f"error: --n-train and --n-test must be at least 1 (got {args.n_train} and {args.n_test})",
              file=sys.stderr)
        sys.exit(2)
    train, test = dataset(args.n_train, args.n_test, args.seed)
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        def write(p, rows=rows):
            with open(p, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        atomic_write(os.path.join(args.out, name), write)
    tok = build_tokenizer()
    save_tokenizer(tok, os.path.join(args.out, "tokenizer"))
    checked = sum("Wait" in r["thinking_trajectories"][0] for r in train)
    wrong = sum(r["attempt"] != f"Final Answer: {r['answer']}" for r in train)
    print(f"{args.out}/train.jsonl: {len(train)} problems, {checked} ({100 * checked / len(train):.0f}%) checked "
          f"after a Wait, {wrong} ({100 * wrong / len(train):.0f}%) answered with a wrong glance")
    print(f"{args.out}/test.jsonl: {len(test)} held-out problems; {args.out}/tokenizer: {tok.get_vocab_size()} tokens")


if __name__ == "__main__":
    main()
