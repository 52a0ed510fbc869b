"""
Sample from a Qwen2 model with s1's budget forcing: a KV-cache decoder written by hand.

Read it top to bottom: the prompt, one pure sampling function, the budget-forcing state of one row,
the batched decode loop (one prefill, then one token per step through a preallocated KV cache), the
Python API that eval.py reuses, then the command line.

Budget forcing (../shared/S1_NOTES.md) happens *between* the model and its own output: thinking ends
when the model emits <|im_start|> or <|im_end|>; `--wait N` drops that delimiter the first N times and
feeds "Wait" instead; `--max-thinking-tokens` cuts thinking off by feeding "\\n<|im_start|>answer\\nFinal
Answer:". Every forced token goes through the same decode step as a sampled one, one per step, from a
per-row queue (nanochat's forced tool-output tokens), so the KV cache always holds exactly the text.

What it leaves out: speculative decoding, paged attention, continuous batching (finished rows leave the
batch, new prompts do not join it), and chunked prefill (s1's prompts are short).

    python sample.py --wait 2                                   # the tiny model of `python train.py --tiny`
    python sample.py --model Qwen/Qwen2.5-0.5B-Instruct --max-thinking-tokens 512 "What is 17*23?"
    python sample.py --model out/s1 --json --file questions.jsonl > generations.jsonl
"""

import argparse
import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch

from model import CheckpointError, Qwen2, resolve_checkpoint

# -----------------------------------------------------------------------------
# Defaults, spelled out once (s1's evaluation: greedy, 32768 tokens in all, no forcing unless asked)

MODEL = "out/tiny"  # where the README's first run (`python train.py --tiny`) exports its model
QUESTION = "How many r in raspberry?"  # the paper's example
WAIT = 0  # how many times to replace the end of thinking with WAIT_STR
WAIT_STR = "Wait"
MAX_THINKING_TOKENS = None  # None (no cap), an int, or "auto"
MAX_NEW_TOKENS = 32768  # thinking + answer, forced tokens included; capped by the model's context
ANSWER_RESERVE = 100  # "auto" thinking budget = what the context leaves after this many answer tokens
TEMPERATURE = 0.0  # 0 = greedy
TOP_K = None
TOP_P = 1.0
BATCH_SIZE = 16  # prompts decoded together by the command line
CACHE_ROUND = 1024  # --compile: cache lengths rounded up to a multiple of this, so batches share a graph

THINK = "<|im_start|>think"  # ends the prompt: the model writes its thinking after it
ANSWER = "<|im_start|>answer"  # forced when thinking ends
FINAL = "\nFinal Answer:"  # appended to ANSWER when the thinking budget runs out


class InputError(ValueError):
    """Bad input from the user; the message says what is wrong and what to do."""


def build_prompt(tokenizer, question: str, raw: bool = False) -> str:
    """The chat template with the tokenizer's default system prompt, then <|im_start|>think (no newline)."""
    if raw:
        return question
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + THINK


def starts_in_thinking(prompt: str) -> bool:
    """True when the prompt leaves the model inside a think block (a --raw prompt may or may not)."""
    head, sep, last = prompt.rpartition("<|im_start|>")
    return bool(sep) and last.startswith("think") and "<|im_end|>" not in last


# -----------------------------------------------------------------------------
# Sampling: one pure function


def sample(logits, temperature=0.0, top_k=None, top_p=1.0, vocab_limit=None, generator=None):
    """
    logits (B, V) -> token ids (B,). Temperature 0 is argmax; otherwise temperature, then top-k, then
    top-p (the smallest set of tokens whose probability reaches top_p). Ids >= vocab_limit are never
    chosen: Qwen's embedding has 151936 rows for 151665 tokens, and the padding rows decode to nothing.
    """
    logits = logits[:, :vocab_limit].float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# -----------------------------------------------------------------------------
# Budget forcing: the token ids involved, and the state of one row


@dataclass
class Forcing:
    """The token ids of s1's budget forcing for one tokenizer (all empty: plain decoding, no stop)."""
    think_end: set = field(default_factory=set)  # end thinking: <|im_start|>, <|im_end|> and eos
    stop: set = field(default_factory=set)  # end the answer: <|im_end|> and eos
    waits: int = 0  # how many ends of thinking to replace by wait_ids
    wait_ids: list = field(default_factory=list)  # "Wait"
    answer_ids: list = field(default_factory=list)  # natural end: "<|im_start|>answer"
    final_ids: list = field(default_factory=list)  # budget hit: "<|im_start|>answer\nFinal Answer:"
    final_nl_ids: list = field(default_factory=list)  # the same after "\n", for text not ending in one
    ends_with_newline: object = lambda ids: False  # ids -> bool (needs the tokenizer to decode)


def make_forcing(tokenizer, wait=WAIT, wait_str=WAIT_STR) -> Forcing:
    def encode(s):
        # A tokenizer that cannot spell a forced string (an unknown character) would inject garbage.
        ids = tokenizer.encode(s, add_special_tokens=False)
        if tokenizer.decode(ids) != s:
            raise InputError(f"the tokenizer cannot write {s!r} (it reads back as {tokenizer.decode(ids)!r}); "
                             "budget forcing needs a tokenizer that can")
        return ids

    im_start, im_end = encode("<|im_start|>"), encode("<|im_end|>")
    if len(im_start) != 1 or len(im_end) != 1:
        raise InputError("the tokenizer has no <|im_start|> and <|im_end|> tokens; budget forcing needs a "
                         "Qwen-style chat tokenizer (or pass raw=True / --raw with a plain prompt)")
    im_start, im_end = im_start[0], im_end[0]
    eos = {tokenizer.eos_token_id} - {None}
    return Forcing(think_end={im_start, im_end} | eos, stop={im_end} | eos, waits=wait,
                   wait_ids=encode(wait_str), answer_ids=encode(ANSWER), final_ids=encode(ANSWER + FINAL),
                   final_nl_ids=encode("\n" + ANSWER + FINAL),
                   ends_with_newline=lambda ids: tokenizer.decode(ids).endswith("\n"))


@dataclass
class Row:
    """Where one prompt's generation stands. Every row of a batch has its own."""
    max_new: int  # generated tokens allowed, forced ones included
    budget: int | None = None  # thinking tokens allowed (sampled and injected Wait tokens)
    phase: str = "answer"  # "thinking" -> "answer" -> "done"
    tokens: list = field(default_factory=list)  # every token fed after the prompt
    forced: list = field(default_factory=list)  # whether each was forced
    queue: deque = field(default_factory=deque)  # forced tokens still to feed, one per step
    thinking_tokens: int = 0
    waits: int = 0
    must_think: bool = False  # a Wait was injected: the next sampled token may not end thinking
    forced_answer: bool = False  # thinking was cut off by the budget
    finish_reason: str | None = None  # "stop" (<|im_end|> or eos) or "length"


def next_token(row: Row, sampled: int, f: Forcing) -> tuple[int, bool, str]:
    """
    Decide what `row` feeds next, the model's `sampled` token or a forced one, and update its state.
    Returns (token, forced, phase the token belongs to). The order of the checks is the rule set:
    the budget beats everything, then a queued forced token beats the sample, then a sample that
    would end thinking is dropped and replaced by Wait or by <|im_start|>answer.
    """
    if row.phase == "thinking" and row.budget is not None and row.thinking_tokens >= row.budget:
        # At the cap: drop the sample (and a Wait cut short, possible only if it is several tokens).
        ids = f.final_ids if f.ends_with_newline(row.tokens) else f.final_nl_ids
        row.queue = deque(ids)
        row.phase, row.forced_answer = "answer", True
    if row.queue:
        token, forced = row.queue.popleft(), True
    else:
        token, forced = sampled, False
        if row.phase == "thinking" and token in f.think_end:
            if row.waits < f.waits:  # extend: the delimiter is never fed, "Wait" is
                row.waits += 1
                row.queue.extend(f.wait_ids)
                row.must_think = True
            else:  # natural end of thinking
                row.queue.extend(f.answer_ids)
                row.phase = "answer"
            token, forced = row.queue.popleft(), True
        else:
            row.must_think = False
    phase = row.phase
    row.tokens.append(token)
    row.forced.append(forced)
    if phase == "thinking":
        row.thinking_tokens += 1
    if phase == "answer" and not forced and token in f.stop:
        row.phase, row.finish_reason = "done", "stop"
    elif len(row.tokens) >= row.max_new:
        row.phase, row.finish_reason = "done", "length"
    return token, forced, phase


# -----------------------------------------------------------------------------
# The decode loop


def decode_step(model, idx, input_pos, position_ids, mask):
    """One token per row against the cache: idx (B, 1) -> logits (B, V). The only compiled function."""
    return model(idx, input_pos=input_pos, position_ids=position_ids, mask=mask)[:, -1]


def keep_rows(model, keep):
    """Shrink every layer's KV cache to the rows still generating: finished rows stop costing compute."""
    for layer in model.model.layers:
        cache = layer.self_attn.kv_cache
        cache.k, cache.v = cache.k[keep], cache.v[keep]


@torch.no_grad()
def decode(model, prompts: list[list[int]], rows: list[Row], forcing: Forcing = Forcing(), *,
           temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, vocab_limit=None, generator=None, compile=False):
    """
    Generate for a batch of token-id prompts; yields (row, token, forced, phase) for every token, in
    step order. Prompts are left-padded to a common length P, so all rows write the same cache slot at
    each step; each row's RoPE positions count from its own first real token (as transformers' generate
    does with left padding) and an explicit (B, 1, T, S) mask keeps the padding out of attention.
    """
    device = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    S = P + max(r.max_new for r in rows)  # cache slots: the longest prompt, then the longest generation
    if compile:
        S = -(-S // CACHE_ROUND) * CACHE_ROUND
    model.setup_cache(B, S)
    pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (B,)
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=device)  # (B, P)
    slots = torch.arange(S, device=device)
    live = (slots[None, :] >= pad[:, None]) & (slots < P)  # (B, S) slots a row may attend to: its prompt so far

    # Prefill: the whole prompt at once. Padding queries see only themselves, so no softmax row is empty.
    causal = slots[:P, None] >= slots[None, :P]  # (P, P)
    mask = (causal & live[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)  # (B, P, P)
    position_ids = (slots[None, :P] - pad[:, None]).clamp(min=0)  # (B, P)
    logits = model(idx, input_pos=slots[:P], position_ids=position_ids, mask=mask[:, None], last_only=True)[:, -1]

    # CUDA graphs replay the whole step, which removes the per-kernel launch cost that dominates batch 1
    # on a GPU. Each new batch size (rows leaving) or cache length compiles again; past torch's limit
    # (torch._dynamo.config.cache_size_limit) it runs eagerly, which is slower but still right.
    step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True) if compile else decode_step
    alive = list(range(B))  # original row index of each batch row
    try:
        for t in range(P, S):
            # Rows just after a Wait may not end thinking with this sample (vLLM's min_tokens=1).
            banned = [(i, tok) for i, r in enumerate(alive) if rows[r].must_think and rows[r].phase == "thinking"
                      for tok in forcing.think_end]
            if banned:
                i, tok = zip(*banned)
                logits[list(i), list(tok)] = float("-inf")
            sampled = sample(logits, temperature, top_k, top_p, vocab_limit, generator).tolist()  # one sync a step
            fed = []
            for i, r in enumerate(alive):
                token, forced, phase = next_token(rows[r], sampled[i], forcing)
                fed.append(token)
                yield r, token, forced, phase
            keep = [i for i, r in enumerate(alive) if rows[r].phase != "done"]
            if not keep:
                break
            if len(keep) < len(alive):
                keep_t = torch.tensor(keep, device=device)
                keep_rows(model, keep_t)
                live, pad = live[keep_t], pad[keep_t]
                alive, fed = [alive[i] for i in keep], [fed[i] for i in keep]
            live[:, t] = True
            # Eager attention stops at the last written slot. A compiled step attends to the whole cache
            # (masked beyond t), as gpt-fast does: static shapes, so one CUDA graph serves every step.
            mask = live[:, None, None, :] if compile else live[:, None, None, : t + 1]  # (B, 1, 1, S or t+1)
            idx = torch.tensor(fed, device=device)[:, None]  # (B, 1)
            logits = step(model, idx, slots[t:t + 1], (t - pad)[:, None], mask)
    finally:
        model.clear_cache()


# -----------------------------------------------------------------------------
# The Python API (eval.py uses it; the command line below is a thin wrapper)


def load_model(model_path: str, device=None, dtype=None):
    """A model and its tokenizer from a checkpoint directory or hub id; device and dtype chosen if None."""
    from transformers import AutoTokenizer

    available = dict(cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available(), cpu=True)
    device = device or next(d for d, ok in available.items() if ok)  # the first available, in this order
    if not available.get(str(device).split(":")[0]):
        raise InputError(f"device {device} is not available here; use cpu, or leave the device out to pick one")
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    if dtype is None:  # bf16 where the hardware has it; fp32 elsewhere (CPU bf16 matmuls are slow on most)
        dtype = torch.bfloat16 if str(device).startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    ckpt_dir = resolve_checkpoint(model_path)
    model = Qwen2.from_pretrained(ckpt_dir, dtype=dtype, device=device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt_dir)
    except Exception as e:
        raise CheckpointError(f"{ckpt_dir}: no usable tokenizer ({type(e).__name__}); copy the tokenizer files "
                              "(tokenizer.json, tokenizer_config.json) of the model it came from into it") from None
    return model, tokenizer


@dataclass
class Generation:
    prompt: str  # what the model saw (the chat template applied unless raw)
    text: str  # everything generated after the prompt, special tokens kept, the final stop token left out
    thinking: str  # text before the first <|im_start|>answer
    answer: str  # text after it
    token_ids: list  # every generated id, forced ones and the final stop token included
    forced: list  # whether each of token_ids was forced
    thinking_tokens: int  # sampled and injected tokens of the thinking phase
    waits: int  # how many times "Wait" was injected
    forced_answer: bool  # the thinking budget ran out
    finish_reason: str  # "stop" (<|im_end|> or eos) or "length"


def check_settings(max_new_tokens, max_thinking_tokens, wait, wait_str, temperature, top_k, top_p):
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise InputError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if not (max_thinking_tokens in (None, "auto") or isinstance(max_thinking_tokens, int) and max_thinking_tokens >= 1):
        raise InputError(f"max thinking tokens must be a positive integer or 'auto', not {max_thinking_tokens!r}")
    if not (isinstance(wait, int) and wait >= 0):
        raise InputError(f"wait must be 0 or more (how many times to inject {wait_str!r}), not {wait!r}")
    if wait > 0 and not wait_str:
        raise InputError("the wait string is empty; give the text to inject, e.g. 'Wait'")
    if not temperature >= 0:
        raise InputError(f"temperature must be >= 0 (0 = greedy), not {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise InputError(f"top-k must be a positive integer, not {top_k!r}")
    if not 0 < top_p <= 1:
        raise InputError(f"top-p must be in (0, 1], not {top_p!r}")


def tokenize_prompts(model, tokenizer, prompts: list[str], raw=False) -> tuple[list[str], list[list[int]]]:
    """The prompt texts and their token ids; an empty prompt or one that fills the context is refused."""
    texts = [build_prompt(tokenizer, q, raw) for q in prompts]
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    context = model.config.max_position_embeddings
    for i, (q, p) in enumerate(zip(prompts, ids)):
        if not q.strip():
            raise InputError(f"prompt {i + 1} is empty; give a question")
        if len(p) >= context:
            raise InputError(f"prompt {i + 1} is {len(p)} tokens but the model's context is {context}; shorten it")
    return texts, ids


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens=MAX_NEW_TOKENS,
             max_thinking_tokens=MAX_THINKING_TOKENS, wait=WAIT, wait_str=WAIT_STR, temperature=TEMPERATURE,
             top_k=TOP_K, top_p=TOP_P, seed=None, raw=False, compile=False, on_token=None) -> list[Generation]:
    """
    Answer a batch of questions with budget forcing, all rows in one decode loop. `prompts` are the
    questions (raw=True: the exact text to continue; budget forcing applies if it ends inside a think
    block). max_thinking_tokens: None, an int, or "auto" (the context left after ANSWER_RESERVE answer
    tokens). on_token(row, token_id, forced, phase) is called for every token as it is decided.
    """
    check_settings(max_new_tokens, max_thinking_tokens, wait, wait_str, temperature, top_k, top_p)
    texts, ids = tokenize_prompts(model, tokenizer, prompts, raw)
    rows = []
    for i, p in enumerate(ids):
        max_new = min(max_new_tokens, model.config.max_position_embeddings - len(p))
        budget = max(1, max_new - ANSWER_RESERVE) if max_thinking_tokens == "auto" else max_thinking_tokens
        rows.append(Row(max_new=max_new, budget=budget, phase="thinking" if starts_in_thinking(texts[i]) else "answer"))

    generator = None
    if seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    if any(r.phase == "thinking" for r in rows):
        forcing = make_forcing(tokenizer, wait, wait_str)
    else:  # plain text: no thinking to force, stop at the end of a turn or of the text
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        forcing = Forcing(stop={tokenizer.eos_token_id, im_end} - {None, tokenizer.unk_token_id})
    for row, token, forced, phase in decode(model, ids, rows, forcing, temperature=temperature, top_k=top_k,
                                            top_p=top_p, vocab_limit=min(len(tokenizer), model.config.vocab_size),
                                            generator=generator, compile=compile):
        if on_token is not None:
            on_token(row, token, forced, phase)

    out = []
    for i, r in enumerate(rows):
        kept = r.tokens[:-1] if r.finish_reason == "stop" else r.tokens  # vLLM also leaves the stop token out
        text = tokenizer.decode(kept, skip_special_tokens=False)
        thinking, _, answer = text.partition(ANSWER) if starts_in_thinking(texts[i]) else ("", "", text)
        out.append(Generation(prompt=texts[i], text=text, thinking=thinking, answer=answer, token_ids=r.tokens,
                              forced=r.forced, thinking_tokens=r.thinking_tokens, waits=r.waits,
                              forced_answer=r.forced_answer, finish_reason=r.finish_reason))
    return out


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every parameter once, but only one row of an untied embedding."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied weight is listed once
    if not model.config.tie_word_embeddings:  # a tied table is read whole anyway, as the output head
        total -= model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
    return total


# -----------------------------------------------------------------------------
# Command line


class Stream:
    """Prints one row's tokens as they come. In a terminal: thinking dim, forced tokens bold yellow;
    in a file or pipe: a "--- phase ---" line where the phase changes, forced tokens [[in brackets]]."""

    def __init__(self, tokenizer, out=sys.stdout):
        self.tok, self.out, self.tty = tokenizer, out, out.isatty()
        self.pending = []  # ids not yet printable (half a UTF-8 character)
        self.phase, self.forced = None, False

    def __call__(self, row, token, forced, phase):
        if (phase, forced) != (self.phase, self.forced):
            self.flush()
            if self.tty:
                self.write(("\033[2m" if phase == "thinking" else "") + ("\033[1;33m" if forced else ""))
            else:
                self.write((f"\n--- {phase} ---\n" if phase != self.phase else "") + ("[[" if forced else ""))
            self.phase, self.forced = phase, forced
        self.pending.append(token)
        piece = self.tok.decode(self.pending, skip_special_tokens=False)
        if not piece.endswith("\ufffd"):
            self.write(piece)
            self.pending = []

    def flush(self):
        """Print what is pending and close the current style."""
        if self.pending:
            self.write(self.tok.decode(self.pending, skip_special_tokens=False))
            self.pending = []
        self.write("\033[0m" if self.tty else "]]" if self.forced else "")

    def write(self, s):
        self.out.write(s)
        self.out.flush()


def read_prompts(args) -> list[str]:
    """Arguments, else --file (text lines or jsonl), else stdin when piped, else the paper's question."""
    if args.prompts:
        return args.prompts
    if args.file == "-" or (args.file is None and not sys.stdin.isatty()):
        lines = sys.stdin.read().splitlines()
    elif args.file is not None:
        if not os.path.isfile(args.file):
            raise InputError(f"{args.file}: no such file; give a text file (one question a line) or a .jsonl")
        with open(args.file) as f:
            lines = f.read().splitlines()
    else:
        return [QUESTION]
    prompts = []
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{args.file or 'stdin'} line {n}: not valid JSON ({e.msg})") from None
            q = next((row[k] for k in ("question", "prompt", "problem") if isinstance(row.get(k), str)), None)
            if q is None:
                raise InputError(f"{args.file or 'stdin'} line {n}: no 'question', 'prompt' or 'problem' field")
            prompts.append(q)
        elif line.strip():
            prompts.append(line)
    return prompts or [QUESTION]


def budget_arg(s):
    if s == "auto":
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer or 'auto'") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Sample from a Qwen2 model with s1 budget forcing.")
    p.add_argument("prompts", nargs="*", help=f"questions (default: --file, piped stdin, or {QUESTION!r})")
    p.add_argument("--model", default=MODEL, help=f"checkpoint directory or hub id (default: {MODEL}, "
                   "the output of the README's first run)")
    p.add_argument("--file", help="questions, one a line, or jsonl with a 'question' field; '-' for stdin")
    p.add_argument("--wait", type=int, default=WAIT, help="replace the end of thinking by --wait-str this many times")
    p.add_argument("--wait-str", default=WAIT_STR)
    p.add_argument("--max-thinking-tokens", type=budget_arg, default=MAX_THINKING_TOKENS, help="int or 'auto'")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="capped by the model's context")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=TOP_K)
    p.add_argument("--top-p", type=float, default=TOP_P)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="continue the text as is, no chat template")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt on stdout")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="prompts decoded together")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on GPU)")
    # One line on stderr and exit code 2 for every bad argument, argparse's own errors included.
    p.error = fail
    return p.parse_args(argv)


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = parse_args(argv)
    try:
        settings = dict(max_new_tokens=args.max_new_tokens, max_thinking_tokens=args.max_thinking_tokens,
                        wait=args.wait, wait_str=args.wait_str, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p)
        check_settings(**settings)  # before the model loads: a typo costs seconds, not a 32B load
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {args.batch_size}")
        prompts = read_prompts(args)
        if args.model == MODEL and not os.path.isdir(MODEL):
            raise InputError(f"no model at {MODEL}: run `python train.py --tiny` first (the README's first run) "
                             "or pass --model DIR_OR_HUB_ID")
        t0 = time.perf_counter()
        model, tokenizer = load_model(args.model, None if args.device == "auto" else args.device, args.dtype)
        load_s = time.perf_counter() - t0
        tokenize_prompts(model, tokenizer, prompts, args.raw)  # refuse a bad prompt before printing anything
        stream = Stream(tokenizer) if len(prompts) == 1 and not args.json else None
        if stream:
            print(build_prompt(tokenizer, prompts[0], args.raw), end="", flush=True)
        t0, n_tokens, n_steps = time.perf_counter(), 0, 0
        for start in range(0, len(prompts), args.batch_size):
            gens = generate(model, tokenizer, prompts[start:start + args.batch_size], seed=args.seed, raw=args.raw,
                            compile=args.compile, on_token=stream, **settings)
            n_tokens += sum(len(g.token_ids) for g in gens)
            n_steps += max(len(g.token_ids) for g in gens)
            for i, g in enumerate(gens):
                if args.json:
                    print(json.dumps(asdict(g), ensure_ascii=False), flush=True)
                elif stream:
                    stream.flush()
                    print()
                else:
                    print(f"=== {start + i + 1} ===\n{g.prompt}{g.text}\n", flush=True)
    except (InputError, CheckpointError) as e:
        fail(e)
    except KeyboardInterrupt:
        sys.exit(130)
    dt = time.perf_counter() - t0
    # Batch 1 reads every weight once a token: that sets the speed limit on any hardware ("bandwidth achieved").
    gbps = weight_bytes_per_token(model) * n_steps / dt / 1e9
    g = gens[0]
    last = f"; thinking {g.thinking_tokens} tokens, {g.waits} waits, finish {g.finish_reason}" if stream else ""
    print(f"{n_tokens} tokens in {dt:.2f}s: {n_tokens / dt:.1f} tokens/s, bandwidth achieved {gbps:.2f} GB/s "
          f"(model loaded in {load_s:.1f}s on {next(model.parameters()).device}){last}", file=sys.stderr)


if __name__ == "__main__":
    main()
