"""
Run a local model over a set of questions, resumably, and distill a teacher's reasoning traces with it.

Two ways to ask a model, both through this project's own code:
  - free generation with sample.py's engine (a teacher's traces; curate.py's difficulty attempts), and
  - a choice among fixed options, scored exactly from the model's logits (curate.py's domain codes and its
    judge's Yes/No): decoding constrained to the options, so no output is ever malformed.
Results go to a cache file per model, one jsonl line per question, keyed by the question's hash (s1's
question_hash); every finished batch is appended and synced, so a crash loses only the batch in flight and
a rerun does only what is missing. The first line holds the settings; a rerun with others is refused.

    python distill.py --questions data/my_s1k.jsonl --out data/my_s1k_r1.jsonl
    python distill.py --questions data/my_s1k.jsonl --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --out ...
    python train.py --data data/my_s1k_r1.jsonl

The teacher (default DeepSeek-R1-Distill-Qwen-32B: a Qwen2 model, so model.py loads it) answers each
question in its own chat template; its `<think>...</think>` output is split into thinking and attempt and
written in s1K-1.1's columns (deepseek_thinking_trajectory, deepseek_attempt, deepseek_grade, whatever the
teacher), which train.py reads by default. The attempt is graded against the row's solution when there is
one, so the report says how often the teacher was right.
What it leaves out: several traces per question and rejection sampling (s1.1 kept one R1 trace each), and
tensor parallelism: the teacher must fit on one GPU (a 32B teacher in bf16 needs an 80 GB one).
"""

import argparse
import hashlib
import json
import os
import re
from collections import Counter

import torch

import sample
from data import DataError, load_rows
from grade import boxes, check  # the grader eval.py uses: this is its one import site
from model import CheckpointError, atomic_write
from sample import fail  # one line on stderr, exit code 2 (curate.py's too)

# -----------------------------------------------------------------------------
# Defaults, spelled out once

TEACHER = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
# DeepSeek-R1's model card (huggingface.co/deepseek-ai/DeepSeek-R1, "Usage Recommendations"): temperature
# 0.5-0.7, 0.6 recommended, top-p 0.95, no system prompt, and for math the directive below. The distilled
# models' generation_config.json say 0.6 and 0.95 too; the teacher's own file is read first.
TEMPERATURE, TOP_P, MAX_NEW_TOKENS = 0.6, 0.95, 32768
DIRECTIVE = "\nPlease reason step by step, and put your final answer within \\boxed{}."
WORK = "out/curate"  # the caches, shared with curate.py
BATCH_SIZE, SEED = 8, 0


class CurateError(ValueError):
    """Bad input; the message says what is wrong and what to do. main() prints it and exits with 2."""


def qhash(question: str) -> str:
    return hashlib.sha256(question.encode()).hexdigest()[:16]  # s1's data/utils/io_utils.question_hash


def slug(name: str) -> str:
    """A model id or path as a file name: Qwen/Qwen2.5-7B-Instruct -> Qwen_Qwen2.5-7B-Instruct."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def empty(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v)


# -----------------------------------------------------------------------------
# Grading an attempt against a row's reference


PROOF = re.compile(r"\b(prove|show that|show, that)\b", re.IGNORECASE)


def reference(row: dict) -> tuple[str, str] | None:
    """(gold, grader) to grade attempts at this row symbolically, or None for a free-text reference: a proof
    (the question says prove or show that, even when its solution boxes the claim) or an explanation. An
    `answer` column wins; else the solution is an integer (AIME-like: integer grader), a letter A-D
    (multiple choice), has a \\boxed{} (its content, math-verify) or is short: one line of at most 64
    characters with no word of 3+ letters outside LaTeX commands ("\\frac{\\pi}{2}", "2.35 m/s")."""
    if not empty(row.get("answer")):
        text = str(row["answer"]).strip()
    elif PROOF.search(row.get("question") or ""):
        return None
    else:
        text = str(row.get("solution") or "").strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return text, "integer"
    letter = re.fullmatch(r"\(?([A-D])\)?\.?", text)
    if letter:
        return letter.group(1), "choice"
    found = boxes(text)
    boxed = found[-1][2].strip() if found else ""  # the last box of the reference solution
    if boxed:
        return boxed, "math"
    words = re.sub(r"\\[A-Za-z]+", "", text)  # LaTeX commands are not words
    if text and "\n" not in text and len(text) <= 64 and not re.search(r"[A-Za-z]{3,}", words):
        return text.rstrip(".").strip("$ "), "math"
    return None


def grade(text: str, ref) -> dict:
    """One attempt's grade: what was extracted and whether it is right (correct None: no symbolic grade)."""
    if ref is None:
        return dict(extracted=None, correct=None, why="the reference is free text: no symbolic grade")
    if not text:
        return dict(extracted=None, correct=False, why="no attempt")
    return check(text, ref[0], ref[1])  # extracted, correct, and why


# -----------------------------------------------------------------------------
# Caches: one jsonl per model and stage; the first line holds the settings it was made with


def read_cache(path: str, settings: dict | None = None) -> dict:
    """{id: record} of a cache file (none yet: {}). With settings: refuse a file made with other ones.
    A last line cut off by a crash is dropped and the file rewritten without it."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        header = json.loads(lines[0])["settings"]
    except (ValueError, KeyError, TypeError):
        raise CurateError(f"{path}: not a cache file of curate.py or distill.py; move it away or use another "
                          "--work") from None
    if settings is not None and header != settings:
        changed = "; ".join(f"{k} {header.get(k)!r} -> {settings.get(k)!r}"
                            for k in sorted(set(header) | set(settings)) if header.get(k) != settings.get(k))
        raise CurateError(f"{path} holds results made with other settings ({changed}); use another --work or delete it")
    records, good = {}, [lines[0]]
    for line in lines[1:]:
        try:
            r = json.loads(line)
            records[r["id"]] = r
            good.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    if len(good) != sum(1 for line in lines if line.strip()) or lines[-1] != "":
        write_text(path, "\n".join(good) + "\n")
    return records


def append_cache(path: str, settings: dict, records: list[dict]):
    """Append records (the settings line first, for a new file), then onto the disk."""
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_text(path, json.dumps(dict(settings=settings)) + "\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str, text: str):
    """A whole file at once (model.atomic_write): a crash leaves the old one or the new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def write_jsonl(path: str, rows: list[dict]):
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# -----------------------------------------------------------------------------
# Free generation


def generate_cached(model, tokenizer, todo: list[tuple[str, str]], path: str, settings: dict, batch_size: int,
                    finish):
    """
    Generate for every (id, prompt) of todo, the prompts already in the model's chat template, and append
    finish(id, generation) to the cache as each one ends (generation None: the prompt does not fit the
    context). The one call into sample.py's engine: every prompt goes in at once, each with its own seed
    (row_seed), batch_size of them decoding together and the next joining as one ends.
    """
    from tqdm import tqdm

    context = model.config.max_position_embeddings
    fits = [len(tokenizer.encode(p, add_special_tokens=False)) < context for _, p in todo]
    if not all(fits):
        append_cache(path, settings, [finish(i, None) for (i, _), ok in zip(todo, fits) if not ok])
    todo = [t for t, ok in zip(todo, fits) if ok]
    bar = tqdm(total=len(todo), desc=os.path.basename(path), unit="question")

    def on_finish(i, gen):  # a crash loses only the generations still in flight
        append_cache(path, settings, [finish(todo[i][0], gen)])
        bar.update(1)

    requests = [dict(prompt=p, seed=row_seed(qid, settings["seed"])) for qid, p in todo]
    try:
        sample.generate(model, tokenizer, requests, raw=True, max_new_tokens=settings["max_new_tokens"],
                        temperature=settings["temperature"], top_p=settings["top_p"], batch_size=batch_size,
                        on_finish=on_finish)
    except torch.OutOfMemoryError:
        raise CurateError(f"out of memory with --batch-size {batch_size}; lower it (finished questions are "
                          "kept)") from None
    finally:
        bar.close()


def row_seed(qid: str, seed: int) -> int:
    """A question's own sampling seed, whatever else decodes beside it."""
    return (int(qid, 16) + seed) % 2**63


# -----------------------------------------------------------------------------
# A choice among fixed options


@torch.no_grad()
def choose(model, prompts: list[list[int]], options: list[list[int]]) -> torch.Tensor:
    """
    log p(option | prompt) for every prompt and option, (B, n_options), each option scored exactly.
    Three passes over one KV cache:
      1. the prompts' common prefix (the instructions, the domain list), once, then copied to every row;
      2. each row's own rest, left-padded to a common length: the distribution of an option's first token;
      3. every proper prefix of an option, fed once, as a tree: each node attends to the prompt and to its
         own ancestors, at the position it has in a plain sequence (for the 61 MSC codes: 10 first digits).
         A node's logits are the distribution of the token after it.
    """
    if len(set(map(tuple, options))) != len(options) or not all(options) or any(
            a != b and b[:len(a)] == a for a in options for b in options):
        raise ValueError("options must be distinct, non-empty, and none may begin another")
    device = next(model.parameters()).device
    B = len(prompts)
    L = 0  # the common prefix; every row keeps at least one token of its own
    while L < min(map(len, prompts)) - 1 and all(p[L] == prompts[0][L] for p in prompts):
        L += 1
    nodes = sorted({tuple(o[:k]) for o in options for k in range(1, len(o))})
    rest = [p[L:] for p in prompts]
    T, N = max(map(len, rest)), len(nodes)
    slots = torch.arange(L + T + N, device=device)

    def ones(*shape):
        return torch.ones(*shape, dtype=torch.bool, device=device)
    model.setup_cache(1 if L else B, L + T + N)
    try:
        if L:
            model(torch.tensor([prompts[0][:L]], device=device), input_pos=slots[:L], last_only=True)
            for layer in model.model.layers:  # the prefix's keys and values, copied into every row
                cache = layer.self_attn.kv_cache
                cache.k, cache.v = cache.k.expand(B, -1, -1, -1).clone(), cache.v.expand(B, -1, -1, -1).clone()
        pad = torch.tensor([T - len(r) for r in rest], device=device)  # (B,)
        idx = torch.tensor([[0] * (T - len(r)) + r for r in rest], device=device)  # (B, T)
        live = torch.arange(T, device=device)[None, :] >= pad[:, None]  # (B, T): real tokens, not padding
        mask = (ones(T, T).tril() & live[:, None, :]) | torch.eye(T, dtype=torch.bool, device=device)  # (B, T, T)
        mask = torch.cat([ones(B, T, L), mask], dim=-1)  # (B, T, L + T)
        position_ids = L + (torch.arange(T, device=device)[None, :] - pad[:, None]).clamp(min=0)  # (B, T)
        logits = model(idx, input_pos=slots[L:L + T], position_ids=position_ids, mask=mask[:, None], last_only=True)
        logp = [logits[:, -1].float().log_softmax(-1)]  # (B, V): an option's first token
        if N:
            ancestor = torch.tensor([[n[:len(a)] == a for a in nodes] for n in nodes], device=device)  # (N, N)
            mask = torch.cat([ones(B, N, L), live[:, None, :].expand(B, N, T), ancestor.expand(B, N, N)], dim=-1)
            depth = torch.tensor([len(n) for n in nodes], device=device)  # (N,)
            position_ids = L + T - pad[:, None] + depth[None, :] - 1  # (B, N)
            node_ids = torch.tensor([n[-1] for n in nodes], device=device).expand(B, N)
            logits = model(node_ids, input_pos=slots[L + T:], position_ids=position_ids, mask=mask[:, None])
            logp += list(logits.float().log_softmax(-1).unbind(1))  # N of (B, V)
    finally:
        model.clear_cache()
    after = {n: k + 1 for k, n in enumerate(nodes)}  # where in logp the distribution after each prefix is
    return torch.stack([sum(logp[after.get(tuple(o[:k]), 0)][:, o[k]] for k in range(len(o))) for o in options], 1)


def choose_cached(model, tokenizer, todo: list[tuple[str, list]], options: list[str], path: str, settings: dict,
                  batch_size: int, field: str):
    """choose() over (id, chat messages) pairs, prompts of similar length together; caches {id, field: option}."""
    from tqdm import tqdm

    option_ids = [tokenizer.encode(o, add_special_tokens=False) for o in options]
    prompts = [(qid, tokenizer.encode(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                                      add_special_tokens=False)) for qid, m in todo]
    prompts.sort(key=lambda t: len(t[1]))
    for start in tqdm(range(0, len(prompts), batch_size), desc=os.path.basename(path), unit="batch"):
        batch = prompts[start:start + batch_size]
        best = choose(model, [p for _, p in batch], option_ids).argmax(-1).tolist()
        append_cache(path, settings, [{"id": qid, field: options[b]} for (qid, _), b in zip(batch, best)])


# -----------------------------------------------------------------------------
# Distillation


def split_think(text: str) -> tuple[str, str] | None:
    """(thinking, attempt) of an R1-style generation, `<think>...</think>answer`; None when thinking never
    ended (cut off by --max-new-tokens). The teacher's chat template may open <think> in the prompt itself."""
    head, sep, attempt = text.partition("</think>")
    if not sep:
        return None
    return head.strip().removeprefix("<think>").strip(), attempt.strip()


def teacher_settings(args) -> dict:
    """--temperature and --top-p, else what the teacher's generation_config.json recommends, else R1's card."""
    try:
        if os.path.isdir(args.model):
            path = os.path.join(args.model, "generation_config.json")
        else:  # this one file: the weights come later, and only if a trace is missing
            from huggingface_hub import hf_hub_download
            path = hf_hub_download(args.model, "generation_config.json")
        with open(path) as f:
            shipped = json.load(f)
    except Exception:  # no such file, no network
        shipped = {}
    pick = lambda flag, key, default: flag if flag is not None else shipped.get(key, default)  # noqa: E731
    return dict(model=args.model, max_new_tokens=args.max_new_tokens, directive=args.directive, seed=args.seed,
                temperature=pick(args.temperature, "temperature", TEMPERATURE), top_p=pick(args.top_p, "top_p", TOP_P))


def distill(args):
    if not args.out.endswith(".jsonl"):
        raise CurateError(f"--out {args.out}: give a .jsonl file")
    rows = load_rows(args.questions)
    if "question" not in rows.column_names:
        raise CurateError(f"{args.questions}: no column 'question' (it has {', '.join(rows.column_names)})")
    rows = list({qhash(r["question"]): r for r in rows if not empty(r["question"])}.values())  # each question once
    settings = teacher_settings(args)
    path = os.path.join(args.work, "traces", slug(args.model) + ".jsonl")
    done = read_cache(path, settings)
    todo = [r for r in rows if qhash(r["question"]) not in done]
    print(f"{args.model} (temperature {settings['temperature']}, top-p {settings['top_p']}): {len(todo)} traces to "
          f"write, {len(rows) - len(todo)} already in {path}")
    if todo:
        model, tokenizer = sample.load_model(args.model, args.device, args.dtype)
        todo = [(qhash(r["question"]), tokenizer.apply_chat_template(  # no system prompt, as R1's card asks
            [{"role": "user", "content": r["question"] + args.directive}], tokenize=False, add_generation_prompt=True))
            for r in todo]
        generate_cached(model, tokenizer, todo, path, settings, args.batch_size, lambda qid, g: dict(
            id=qid, text=g.text if g else "", finish=g.finish_reason if g else "prompt too long",
            new_tokens=len(g.token_ids) if g else 0))
        done = read_cache(path, settings)

    out, counts = [], Counter()
    for r in rows:
        split = split_think(done[qhash(r["question"])]["text"])
        if split is None:
            counts["no end of thinking (left out)"] += 1
            continue
        correct = grade(split[1], reference(r))["correct"]
        counts[{True: "right", False: "wrong", None: "not graded"}[correct]] += 1
        out.append(dict(r, deepseek_thinking_trajectory=split[0], deepseek_attempt=split[1],
                        deepseek_grade=None if correct is None else "Yes" if correct else "No", teacher=args.model))
    if not out:
        raise CurateError(f"no trace of {args.model} ended its thinking (</think>); raise --max-new-tokens (it is "
                          f"{args.max_new_tokens}) or use a reasoning teacher; nothing written")
    write_jsonl(args.out, out)
    write_text(args.out[:-len(".jsonl")] + ".report.json",
               json.dumps(dict(questions=len(rows), written=len(out), **counts, settings=settings), indent=2) + "\n")
    graded = counts["right"] + counts["wrong"]
    print(f"wrote {args.out}: {len(out)} of {len(rows)} questions; the teacher's attempt is right on {counts['right']} "
          f"of {graded} graded ({100 * counts['right'] / max(1, graded):.1f}%)"
          + "".join(f", {k} {v}" for k, v in counts.items() if k not in ("right", "wrong")))


# -----------------------------------------------------------------------------
# Command line


def add_model_args(p, model, batch_size):
    p.add_argument("--model", default=model, help="checkpoint directory or hub id (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=batch_size, help="default %(default)s")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--work", default=WORK, help="the caches (default %(default)s)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.error = fail
    p.add_argument("--questions", required=True, help="hub id or .jsonl/.parquet with a question column "
                   "(and solution, to grade the teacher)")
    p.add_argument("--out", required=True, help=".jsonl in s1K-1.1's columns, which train.py reads")
    add_model_args(p, TEACHER, BATCH_SIZE)
    p.add_argument("--temperature", type=float, default=None,
                   help=f"default: the teacher's generation_config.json, else {TEMPERATURE}")
    p.add_argument("--top-p", type=float, default=None, help=f"default: as --temperature, else {TOP_P}")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="default %(default)s")
    p.add_argument("--directive", default=DIRECTIVE, help="appended to every question (R1's card; '' for none)")
    p.add_argument("--seed", type=int, default=SEED)
    return p.parse_args(argv)


def run(func, args):
    """func(args), with every error the user can fix as one line and exit code 2."""
    try:
        if getattr(args, "batch_size", 1) < 1:
            raise CurateError("--batch-size must be at least 1")
        func(args)
    except (CurateError, DataError, CheckpointError, sample.InputError) as e:
        fail(str(e))


def main(argv=None):
    run(distill, parse_args(argv))


if __name__ == "__main__":
    main()
