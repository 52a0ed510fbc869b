"""
s1K-style training data: load, format with the chat template, tokenise, mask, truncate, batch.

One training text per example, exactly as s1 built it (../shared/S1_NOTES.md): the tokenizer's chat
template with the question as the user turn and no system message (so Qwen's default system prompt is
inserted), and as the assistant turn

    "<|im_start|>think\n" + thinking.strip() + "\n<|im_start|>answer\n" + answer.strip()

where answer = "Answer: " + attempt unless the attempt already says "Answer:". Every token after
`<|im_start|>assistant\n` is trained (thinking, the inner delimiters, the answer, the closing
`<|im_end|>` and the newline the template puts after it); nothing of the system or user turns. The mask
is built where the conversation is rendered: the prompt is rendered on its own with the generation
prompt, and its tokens must be a prefix of the full text's tokens.

What it leaves out: packing several examples into one sequence (s1 trains one example per sequence)
and multi-turn conversations.

    python data.py stats --data simplescaling/s1K-1.1 --tokenizer Qwen/Qwen2.5-32B-Instruct
"""

import argparse
import math
import os
import sys

import torch

ASSISTANT_HEADER = "<|im_start|>assistant\n"
# Which columns hold the thinking trace and the answer, best first: s1K-1.1 carries both DeepSeek-R1's
# traces (the better ones, used for s1.1) and the Gemini ones of s1K; s1K has only the latter.
THINKING_COLUMNS = ["deepseek_thinking_trajectory", "thinking_trajectories"]
ANSWER_FOR_THINKING = {"deepseek_thinking_trajectory": "deepseek_attempt", "thinking_trajectories": "attempt"}
IGNORE = -100  # the target id that cross-entropy skips


class DataError(ValueError):
    """Unusable training data; the message says what is wrong and what to do."""


# -----------------------------------------------------------------------------
# Loading and formatting


def load_rows(source: str, split: str = "train"):
    """A local .jsonl/.json/.parquet file, or a hub dataset id such as simplescaling/s1K-1.1."""
    import datasets

    datasets.disable_progress_bars()
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    ext = os.path.splitext(source)[1].lower()
    try:
        if os.path.isfile(source):
            if ext not in kinds:
                raise DataError(f"{source}: unknown file type {ext!r}; give a .jsonl, .json or .parquet file")
            if os.path.getsize(source) == 0:
                raise DataError(f"{source}: the dataset is empty; it needs at least one example")
            rows = datasets.load_dataset(kinds[ext], data_files=source, split="train")
        elif os.path.exists(source) or ext in kinds:
            raise DataError(f"{source}: no such file; give a .jsonl/.json/.parquet file or a hub id")
        else:
            rows = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except Exception as e:  # a hub id that does not exist, no network, malformed json ...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(f"{source}: could not load it as a dataset ({type(e).__name__}: {first})") from None
    if len(rows) == 0:
        raise DataError(f"{source}: the dataset is empty; it needs at least one example")
    return rows


def pick_columns(columns, source: str, thinking_column=None, answer_column=None):
    """('text', None, None) for ready texts, else (question, thinking, answer) column names."""
    columns = list(columns)
    if thinking_column is None and answer_column is None and "text" in columns and "question" not in columns:
        return "text", None, None
    if thinking_column is None:
        thinking_column = next((c for c in THINKING_COLUMNS if c in columns), THINKING_COLUMNS[-1])
    if answer_column is None:
        answer_column = ANSWER_FOR_THINKING.get(thinking_column, "attempt")
    for col in ("question", thinking_column, answer_column):
        if col not in columns:
            raise DataError(f"{source}: no column {col!r} (it has {', '.join(columns)}); s1K-style data needs "
                            "question, a thinking trace and an attempt (see --thinking-column, --answer-column), "
                            "or a ready 'text' column")
    return "question", thinking_column, answer_column


def assistant_turn(thinking, attempt: str) -> str:
    """The assistant message s1 trains on: thinking, then the answer, each behind its delimiter."""
    if isinstance(thinking, (list, tuple)):  # s1K's Gemini traces are a list of strings
        thinking = "\n".join(thinking)
    answer = attempt if "Answer:" in attempt else "Answer: " + attempt
    return "<|im_start|>think\n" + thinking.strip() + "\n<|im_start|>answer\n" + answer.strip()


def render(tokenizer, question: str, thinking, attempt: str) -> tuple[str, str]:
    """(prompt, full text): the prompt ends with the generation prompt `<|im_start|>assistant\\n`."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": assistant_turn(thinking, attempt)}], tokenize=False)
    return prompt, full


def tokenize(tokenizer, prompt: str, full: str) -> tuple[list[int], int]:
    """Token ids of the full text and how many of them are the (untrained) prompt."""
    if not full.startswith(prompt):
        raise DataError("the chat template renders the prompt differently inside the full conversation; "
                        "the prompt/answer split would be wrong: use a Qwen-style template")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    # BPE could merge across the boundary; with the header ending in "\n" it never should. Check anyway.
    if ids[:len(prompt_ids)] != prompt_ids:
        raise DataError("the prompt's tokens are not a prefix of the full text's tokens; the tokenizer merges "
                        "across the assistant header, so the label mask cannot be built")
    return ids, len(prompt_ids)


def build_examples(rows, tokenizer, source="data", thinking_column=None, answer_column=None):
    """Every row as (token ids, prompt length)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("the tokenizer has no chat template; use a chat model's tokenizer (e.g. Qwen2.5-*-Instruct)")
    q_col, t_col, a_col = pick_columns(rows.column_names, source, thinking_column, answer_column)
    examples = []
    for i, row in enumerate(rows):
        if q_col == "text":
            text = row["text"]
            if not isinstance(text, str) or ASSISTANT_HEADER not in text:
                raise DataError(f"{source}: row {i}: the 'text' column must hold a rendered conversation with "
                                f"{ASSISTANT_HEADER!r} (everything after it is trained)")
            prompt, full = text[:text.index(ASSISTANT_HEADER) + len(ASSISTANT_HEADER)], text
        else:
            q, t, a = row[q_col], row[t_col], row[a_col]
            for col, v in ((q_col, q), (t_col, t), (a_col, a)):
                if v is None or (isinstance(v, (str, list)) and len(v) == 0):
                    raise DataError(f"{source}: row {i}: column {col!r} is empty; drop the row or fill it in")
            prompt, full = render(tokenizer, q, t, a)
        examples.append(tokenize(tokenizer, prompt, full))
    return examples


def truncate(examples, block_size: int):
    """
    Cut every sequence to `block_size` tokens, as s1 did. Returns the cut examples and a report of what
    was lost. Refuses a block size that leaves some example without a single trained token.
    """
    worst = max(range(len(examples)), key=lambda i: examples[i][1])
    if examples[worst][1] >= block_size:
        raise DataError(f"--block-size {block_size} is shorter than the prompt of example {worst} "
                        f"({examples[worst][1]} tokens); use --block-size {examples[worst][1] + 1} or more")
    lengths = [len(ids) for ids, _ in examples]
    cut = [(ids[:block_size], n) for ids, n in examples]
    n_cut = sum(n > block_size for n in lengths)
    lost = sum(max(0, n - block_size) for n in lengths)
    report = dict(examples=len(examples), truncated=n_cut, tokens=sum(lengths), tokens_lost=lost)
    return cut, report


def describe_truncation(r: dict, block_size: int) -> str:
    return (f"{r['examples']} examples, {r['tokens']:,} tokens; {r['truncated']} truncated to {block_size} tokens, "
            f"{r['tokens_lost']:,} tokens ({100 * r['tokens_lost'] / max(1, r['tokens']):.1f}%) lost")


def load_sft_data(source, tokenizer, block_size, thinking_column=None, answer_column=None):
    """Load, format, tokenise and truncate: ([(ids, prompt length)], truncation report)."""
    rows = load_rows(source)
    return truncate(build_examples(rows, tokenizer, source, thinking_column, answer_column), block_size)


# -----------------------------------------------------------------------------
# Order and batches: a fresh permutation per epoch from the seed, each global batch split over ranks


def steps_per_epoch(n_examples: int, global_batch: int) -> int:
    return math.ceil(n_examples / global_batch)  # s1: ceil(1000 / 16) = 63 steps, 315 over 5 epochs


def epoch_order(n_examples: int, epoch: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_examples, generator=g).tolist()


def global_batch_ids(step: int, n_examples: int, global_batch: int, seed: int) -> list[int]:
    """The examples of optimizer step `step`. A short last batch is filled from the start of the same
    epoch's order (as DistributedSampler pads), so every step has exactly global_batch sequences."""
    spe = steps_per_epoch(n_examples, global_batch)
    order = epoch_order(n_examples, step // spe, seed)
    start = (step % spe) * global_batch
    return [order[(start + j) % n_examples] for j in range(global_batch)]


def rank_micro_batches(batch_ids, rank: int, world: int, micro_batch: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch; micro-step a runs on every rank at once."""
    per_round = world * micro_batch
    if len(batch_ids) % per_round:
        raise DataError(f"global batch {len(batch_ids)} is not a multiple of world size {world} x micro-batch "
                        f"{micro_batch}; change --global-batch or --micro-batch")
    return [batch_ids[(a * world + rank) * micro_batch:(a * world + rank + 1) * micro_batch]
            for a in range(len(batch_ids) // per_round)]


def collate(examples, ids, pad_id=0):
    """Inputs x and targets y, (B, T) each, for examples[ids]; the prompt and the padding are IGNORE."""
    T = max(len(examples[i][0]) for i in ids) - 1
    x = torch.full((len(ids), T), pad_id, dtype=torch.long)
    y = torch.full((len(ids), T), IGNORE, dtype=torch.long)
    for b, i in enumerate(ids):
        seq, n_prompt = examples[i]
        seq = torch.tensor(seq, dtype=torch.long)
        x[b, :len(seq) - 1] = seq[:-1]
        y[b, :len(seq) - 1] = seq[1:]
        y[b, :n_prompt - 1] = IGNORE  # y[t] is token t+1: the first trained target is the first answer token
    return x, y


# -----------------------------------------------------------------------------
# python data.py stats


def stats_main(argv):
    import numpy as np
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(prog="data.py stats", description="token lengths of an s1K-style dataset")
    p.add_argument("--data", default="simplescaling/s1K-1.1")
    p.add_argument("--tokenizer", default="Qwen/Qwen2.5-32B-Instruct")
    p.add_argument("--block-size", type=int, default=32768)
    p.add_argument("--thinking-column", default=None)
    p.add_argument("--answer-column", default=None)
    args = p.parse_args(argv)
    try:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    except Exception as e:
        raise DataError(f"{args.tokenizer}: could not load a tokenizer ({type(e).__name__})") from None
    examples = build_examples(load_rows(args.data), tok, args.data, args.thinking_column, args.answer_column)
    lengths = np.array([len(ids) for ids, _ in examples])
    prompts = np.array([n for _, n in examples])
    print(f"{args.data}: {len(examples)} examples, {lengths.sum():,} tokens")
    for name, v in (("total", lengths), ("prompt", prompts), ("trained", lengths - prompts)):
        pct = np.percentile(v, [50, 90, 99])
        print(f"  {name:8s} tokens: min {v.min()}  p50 {pct[0]:.0f}  p90 {pct[1]:.0f}  p99 {pct[2]:.0f}  max {v.max()}")
    over = lengths > args.block_size
    print(f"  {over.sum()} of {len(examples)} exceed block size {args.block_size} "
          f"({(lengths - args.block_size).clip(min=0).sum():,} tokens would be cut)")


# Subcommands: name -> function(argv). The tiny task below adds its own.
COMMANDS = {"stats": stats_main}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python data.py {{{','.join(COMMANDS)}}} [options]   (--help after a command for its options)",
              file=sys.stderr)
        sys.exit(2)
    try:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# `main()` runs last, below the tiny task's section, so that section's commands exist by then.

# ---- Tiny synthetic task (issue 6) ----
# A task small enough to train a model from scratch on a laptop CPU in minutes, written as s1K rows so
# that the very same train.py / sample.py / eval.py run on it: add two 3-digit numbers. Every thinking
# trace is a hasty solver's. It first writes the sum at a glance, and a glance drops each carry 70% of
# the time ("What is 347 plus 285?" "Quick sum: 522."). Now and then it writes "Wait", adds column by
# column with the carries and answers with the checked sum (and a few checks end with a second "Wait,
# that is right."); otherwise it answers with its glance, so about a quarter of the training answers
# are wrong, as a hasty solver's would be. Whether a trace checks barely depends on its glance (45% of
# the wrong glances, 20% of the right ones), so a greedy model never checks by itself: budget forcing
# decides. Forcing "Wait" where it would stop makes it check. Some checks are cut off before their sum,
# as a thinking budget would cut them, and answered with the glance, to teach a model whose check is
# cut to fall back on its first guess (not every run learns it: see the README's seed spread).
# Every trace has one layout (3-digit operands, sums below 1000, two-digit column sums, each column
# named), so the digits a line adds are easy to find: a 0.8M-parameter model learns the check in a
# few hundred steps, and the glance (every carry at once) stays what the traces taught it.
#
#     python data.py tiny      # data/tiny/train.jsonl, test.jsonl (held-out problems), tokenizer/

import json  # noqa: E402  (the tiny task's own imports)
import random  # noqa: E402
from functools import cache  # noqa: E402

from model import atomic_write, dump_json  # noqa: E402  (files written whole or not at all)

TINY_OUT = "data/tiny"
TINY_TRAIN, TINY_TEST, TINY_SEED = 10000, 200, 0
TINY_SLIP = 0.7  # the glance drops each carry with this probability
TINY_CHECK_WRONG, TINY_CHECK_RIGHT = 0.45, 0.2  # how often a wrong / a right glance is checked
TINY_TWICE = 0.3  # checks that end with a second "Wait" confirming the sum
TINY_CUT = 0.3  # checks cut off by a thinking budget before their sum, answered with the glance
TINY_COLUMNS = ("ones", "tens", "hundreds")  # the check's lines, right to left
TINY_SYSTEM = "You are a tiny model that adds numbers."  # the chat template's default system prompt
# The words the tokenizer keeps whole ("Wait" among them), with and without a leading space. Digits are
# single tokens anyway: Qwen2.5's pre-tokenizer splits every digit off on its own.
TINY_WORDS = ("system user assistant think answer Wait You are tiny model that adds numbers What is plus Quick "
              "sum let me add column by ones tens hundreds Column that right Final Answer").split()
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # Qwen2.5's, in its order, after the rest
# Qwen2.5's pre-tokenizer split: every digit alone, a word with its leading space, punctuation runs.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5's chat template without the tool-calling branch, with the tiny model's default system prompt.
TINY_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + TINY_SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@cache
def qwen_split():
    """Qwen2.5's pre-tokenizer split (QWEN_SPLIT), as the tokenizers library runs it."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated")


def tiny_question(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


def tiny_problem(rng) -> tuple[int, int]:
    a = rng.randrange(100, 900)
    return a, rng.randrange(100, 1000 - a)  # the sum stays below 1000: three digits, like the operands


def tiny_example(a: int, b: int, rng) -> dict:
    """One s1K-format row: question, thinking trajectory (the glance, maybe the check) and attempt."""
    x, y = [a // 10 ** i % 10 for i in range(3)], [b // 10 ** i % 10 for i in range(3)]  # ones first
    glance, glance_carry, carry, columns = 0, 0, 0, []
    for i in range(3):
        glance += (x[i] + y[i] + glance_carry) % 10 * 10 ** i
        glance_carry = int(x[i] + y[i] + glance_carry >= 10 and rng.random() >= TINY_SLIP)
        s = x[i] + y[i] + carry
        columns.append(f"{TINY_COLUMNS[i]}: {x[i]}+{y[i]}+{carry}={s:02d}")
        carry = s // 10
    thinking, answer = f"Quick sum: {glance}.", glance
    if rng.random() < (TINY_CHECK_WRONG if glance != a + b else TINY_CHECK_RIGHT):
        check = "\n".join(["Wait, let me add column by column.", *columns, f"Column sum: {a + b}."])
        if rng.random() < TINY_CUT:
            # Cut off by a thinking budget after some token of the check, before its sum: the solver
            # falls back on its glance.
            pieces = [piece for piece, _ in qwen_split().pre_tokenize_str(check)]  # a cut there ends a token
            check = "".join(pieces[:rng.randrange(1, len(pieces) - 4)])  # the last 4: "6", "3", "2", "."
        else:
            answer = a + b
            if rng.random() < TINY_TWICE:
                check += "\nWait, that is right."
        thinking += "\n" + check
    return dict(question=tiny_question(a, b), thinking_trajectories=[thinking],
                attempt=f"Final Answer: {answer}", answer=str(a + b))


def tiny_dataset(n_train=TINY_TRAIN, n_test=TINY_TEST, seed=TINY_SEED) -> tuple[list, list]:
    """(training rows, test rows); no test problem is in the training rows, in either order."""
    rng = random.Random(seed)
    test = {}
    while len(test) < n_test:
        test.setdefault(tiny_problem(rng))
    train = []
    while len(train) < n_train:
        a, b = tiny_problem(rng)
        if (a, b) not in test and (b, a) not in test:
            train.append(tiny_example(a, b, rng))
    return train, [dict(id=str(i), problem=tiny_question(a, b), answer=str(a + b)) for i, (a, b) in enumerate(test)]


def tiny_tokenizer():
    """
    A byte-level BPE tokenizer built as Qwen2.5's is: NFC, Qwen2.5's pre-tokenizer (every digit alone,
    words with their leading space), the 256 byte symbols first in GPT-2's order (so "\\n" is id 198 as in
    Qwen), merges, then the special tokens. The merges are learned with the tokenizers library from the
    words of TINY_WORDS alone, so each of those words is one token and any other text still encodes (as
    bytes). transformers rebuilds a Qwen2 checkpoint's tokenizer from vocab + merges with Qwen's own
    pre-tokenizer, which is this one: so it reads this tokenizer exactly as it was built.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        qwen_split(),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    alphabet = list(tiny_byte_symbols().values())
    trainer = trainers.BpeTrainer(vocab_size=4096, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([w for word in TINY_WORDS for w in (word, " " + word)], trainer)
    # The trainer lists the alphabet in its own order; put the bytes in GPT-2's, keep the merges.
    learned = json.loads(tok.to_str())["model"]
    vocab = {s: i for i, s in enumerate(alphabet)}
    for s in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(s, len(vocab))
    tok.model = models.BPE(vocab=vocab, merges=[tuple(m) for m in learned["merges"]])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def tiny_byte_symbols() -> dict:
    """GPT-2's printable stand-in for every byte ({byte: symbol}, what ByteLevel writes), in GPT-2's id
    order: so "\\n" is id 198 and " " id 220 here, as in Qwen2.5."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def save_tiny_tokenizer(tok, out_dir: str):
    """tokenizer.json and tokenizer_config.json (special tokens, chat template), as Qwen2.5 ships them."""
    os.makedirs(out_dir, exist_ok=True)
    added = {str(tok.token_to_id(t)): dict(content=t, lstrip=False, normalized=False, rstrip=False,
                                           single_word=False, special=True) for t in SPECIAL_TOKENS}
    config = dict(tokenizer_class="Qwen2Tokenizer", added_tokens_decoder=added, bos_token=None,
                  eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                  additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=TINY_CHAT_TEMPLATE,
                  add_bos_token=False, add_prefix_space=False, clean_up_tokenization_spaces=False,
                  errors="replace", model_max_length=512, split_special_tokens=False)
    atomic_write(os.path.join(out_dir, "tokenizer.json"), tok.save)
    atomic_write(os.path.join(out_dir, "tokenizer_config.json"), lambda p: dump_json(config, p))


def tiny_main(argv):
    p = argparse.ArgumentParser(prog="data.py tiny", description="write the tiny addition task: training rows "
                                "in s1K format, held-out test problems and a tokenizer")
    p.add_argument("--out", default=TINY_OUT)
    p.add_argument("--n-train", type=int, default=TINY_TRAIN)
    p.add_argument("--n-test", type=int, default=TINY_TEST)
    p.add_argument("--seed", type=int, default=TINY_SEED)
    args = p.parse_args(argv)
    if args.n_train < 1 or args.n_test < 1:
        raise DataError(f"--n-train and --n-test must be at least 1 (got {args.n_train} and {args.n_test})")
    train, test = tiny_dataset(args.n_train, args.n_test, args.seed)
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        def write(p, rows=rows):
            with open(p, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        atomic_write(os.path.join(args.out, name), write)
    tok = tiny_tokenizer()
    save_tiny_tokenizer(tok, os.path.join(args.out, "tokenizer"))
    checked = sum("Wait" in r["thinking_trajectories"][0] for r in train)
    wrong = sum(r["attempt"] != f"Final Answer: {r['answer']}" for r in train)
    print(f"{args.out}/train.jsonl: {len(train)} problems, {checked} ({100 * checked / len(train):.0f}%) checked "
          f"after a Wait, {wrong} ({100 * wrong / len(train):.0f}%) answered with a wrong glance")
    print(f"{args.out}/test.jsonl: {len(test)} held-out problems; {args.out}/tokenizer: {tok.get_vocab_size()} tokens")


COMMANDS["tiny"] = tiny_main


if __name__ == "__main__":
    main()
