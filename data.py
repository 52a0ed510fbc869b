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
import functools
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


@functools.lru_cache(maxsize=2)  # every step asks for its epoch's order; lengths is a tuple
def epoch_order(n_examples: int, epoch: int, seed: int, lengths=None, global_batch: int = 1) -> list[int]:
    """A fresh permutation per epoch. Given the examples' lengths, grouped by length as transformers'
    group_by_length: each run of 50 batches is sorted longest first and cut into batches, and the batches
    are shuffled, so that a batch pads its sequences to nearly their own length (less compute wasted on
    padding) while the epoch still sees its batches in random order. A short last batch stays last."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_examples, generator=g).tolist()
    if lengths is None:
        return order
    mega = 50 * global_batch
    order = [i for k in range(0, n_examples, mega) for i in sorted(order[k:k + mega], key=lambda i: -lengths[i])]
    n_full = n_examples // global_batch
    batches = [order[b * global_batch:(b + 1) * global_batch] for b in torch.randperm(n_full, generator=g).tolist()]
    return [i for batch in batches for i in batch] + order[n_full * global_batch:]


def global_batch_ids(step: int, n_examples: int, global_batch: int, seed: int, lengths=None) -> list[int]:
    """The examples of optimizer step `step` (grouped by length if given their `lengths`). A short last
    batch is filled from the start of the same epoch's order (as DistributedSampler pads), so every step has
    exactly global_batch sequences."""
    spe = steps_per_epoch(n_examples, global_batch)
    order = epoch_order(n_examples, step // spe, seed, lengths, global_batch)
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


# Subcommands: name -> function(argv).
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


if __name__ == "__main__":
    main()
