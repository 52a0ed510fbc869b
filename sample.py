"""
Sample from a Qwen2 model with s1's budget forcing, many prompts at once through engine.py's paged KV cache.

Read it top to bottom: the prompt, one pure sampling function, the budget-forcing state of one row,
then the Python API (a long-lived Sampler that requests join and leave, and generate(), the loop over
it that eval.py uses), then the command line. engine.py below it holds the pages, the scheduler that
admits and preempts sequences, and the batched forward pass; it is told which token each row takes.

Budget forcing (../shared/S1_NOTES.md) happens *between* the model and its own output: thinking ends
when the model emits <|im_start|> or <|im_end|>; `--wait N` drops that delimiter the first N times and
feeds "Wait" instead; `--max-thinking-tokens` cuts thinking off by feeding "\\n<|im_start|>answer\\nFinal
Answer:". Every forced token goes through the same decode step as a sampled one, one per step, from a
per-row queue (nanochat's forced tool-output tokens), so the KV cache always holds exactly the text.
Each row has its own settings (budget, Waits, temperature, seed), so one batch can run a whole sweep.

What it leaves out: speculative decoding, and stop strings other than the end-of-turn tokens.

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

from engine import CacheTooSmall, Engine, weight_bytes_per_token
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
BATCH_SIZE = 16  # most rows decoded together; waiting prompts join as rows finish
KV_CACHE_GB = None  # None: engine.py's share of the memory left after the weights
PROMPT_SETTINGS = ("max_new_tokens", "max_thinking_tokens", "wait", "temperature", "top_k", "top_p", "seed")

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


def check_settings(max_new_tokens, max_thinking_tokens, wait, wait_str, temperature, top_k, top_p, seed=None):
    def is_int(x):  # JSON's true is a Python int too; it is no count
        return isinstance(x, int) and not isinstance(x, bool)

    def is_number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not (is_int(max_new_tokens) and max_new_tokens >= 1):
        raise InputError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if not (max_thinking_tokens in (None, "auto") or is_int(max_thinking_tokens) and max_thinking_tokens >= 1):
        raise InputError(f"max thinking tokens must be a positive integer or 'auto', not {max_thinking_tokens!r}")
    if not (is_int(wait) and wait >= 0):
        raise InputError(f"wait must be 0 or more (how many times to inject {wait_str!r}), not {wait!r}")
    if wait > 0 and not wait_str:
        raise InputError("the wait string is empty; give the text to inject, e.g. 'Wait'")
    if not (is_number(temperature) and temperature >= 0):
        raise InputError(f"temperature must be >= 0 (0 = greedy), not {temperature!r}")
    if top_k is not None and not (is_int(top_k) and top_k >= 1):
        raise InputError(f"top-k must be a positive integer, not {top_k!r}")
    if not (is_number(top_p) and 0 < top_p <= 1):
        raise InputError(f"top-p must be in (0, 1], not {top_p!r}")
    if seed is not None and not is_int(seed):
        raise InputError(f"seed must be an integer, not {seed!r}")


@dataclass
class Request:
    """One prompt in a Sampler: its text, its budget-forcing state, and how its tokens are sampled."""
    text: str  # the prompt as the model sees it
    ids: list  # its token ids
    row: Row
    forcing: Forcing
    temperature: float
    top_k: int | None
    top_p: float
    generator: torch.Generator | None  # its own: its samples do not depend on what else is in the batch


@dataclass
class Event:
    """What one step did for one request."""
    id: int  # the request, as submit() returned it
    token: int  # the token it took
    forced: bool  # fed by budget forcing rather than sampled
    phase: str  # "thinking" or "answer": where the token belongs
    generation: Generation | None = None  # with the request's last token: the finished generation


class Sampler:
    """
    A long-lived batch with budget forcing, on engine.py: requests join and leave between steps.

        sampler = Sampler(model, tokenizer, batch_size=64, max_len=model.config.max_position_embeddings)
        rid = sampler.submit("What is 2+2?", max_thinking_tokens=512, wait=1, temperature=0.7, seed=1)
        while sampler.busy:
            for event in sampler.step():  # one forward pass: the next token of every running request
                ...  # event.id, .token, .forced, .phase; .generation once the request is finished
        sampler.cancel(rid)  # at any time: its row and pages are freed at once, and no more events come
        sampler.close()      # frees the KV cache (or: `with Sampler(...) as sampler:`)

    It starts no threads and takes no locks: drive it from one thread (a server's loop calls submit,
    cancel and step in turn). submit() takes generate()'s settings, per request, and raises InputError
    for a bad prompt or setting, queueing nothing. max_len: the longest prompt + generation it must
    hold; None sizes it at the first step() for the requests submitted by then (as generate() does); a
    server passes the model's context, so that any request fits. engine_args go to engine.Engine.
    """

    def __init__(self, model, tokenizer, *, batch_size=BATCH_SIZE, kv_cache_gb=KV_CACHE_GB, max_len=None,
                 compile=False, **engine_args):
        self.model, self.tokenizer, self.max_len = model, tokenizer, max_len
        self.engine_args = dict(engine_args, batch_size=batch_size, kv_cache_gb=kv_cache_gb, compile=compile)
        self.engine, self.requests, self.next_id = None, {}, 0  # the engine is made by start()
        self.forcings = {}  # (wait, wait_str) -> Forcing
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        # plain text: no thinking to force, stop at the end of a turn or of the text
        self.plain = Forcing(stop={tokenizer.eos_token_id, im_end} - {None, tokenizer.unk_token_id})
        self.vocab_limit = min(len(tokenizer), model.config.vocab_size)

    @property
    def busy(self) -> bool:
        return bool(self.requests)

    def submit(self, prompt: str, *, max_new_tokens=MAX_NEW_TOKENS, max_thinking_tokens=MAX_THINKING_TOKENS,
               wait=WAIT, wait_str=WAIT_STR, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, seed=None,
               raw=False) -> int:
        """Queue one question (raw=True: the exact text to continue); returns its id."""
        check_settings(max_new_tokens, max_thinking_tokens, wait, wait_str, temperature, top_k, top_p, seed)
        if not prompt.strip():
            raise InputError("the prompt is empty; give a question")
        text = build_prompt(self.tokenizer, prompt, raw)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        context = self.model.config.max_position_embeddings
        if len(ids) >= context:
            raise InputError(f"the prompt is {len(ids)} tokens but the model's context is {context}; shorten it")
        max_new = min(max_new_tokens, context - len(ids))
        if self.engine is not None and len(ids) + max_new - 1 > self.engine.max_len:
            raise InputError(f"the prompt and max_new_tokens make {len(ids) + max_new - 1} tokens, more than this "
                             f"sampler's max_len={self.engine.max_len}; lower max_new_tokens")
        budget = max(1, max_new - ANSWER_RESERVE) if max_thinking_tokens == "auto" else max_thinking_tokens
        row = Row(max_new=max_new, budget=budget, phase="thinking" if starts_in_thinking(text) else "answer")
        forcing = self.plain
        if row.phase == "thinking":
            if (wait, wait_str) not in self.forcings:
                self.forcings[wait, wait_str] = make_forcing(self.tokenizer, wait, wait_str)
            forcing = self.forcings[wait, wait_str]
        device = next(self.model.parameters()).device
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        rid, self.next_id = self.next_id, self.next_id + 1
        self.requests[rid] = Request(text, ids, row, forcing, temperature, top_k, top_p, generator)
        if self.engine is not None:
            self.engine.add(rid, ids)
        return rid

    def cancel(self, rid):
        """Drop a request that has not finished (a client gone): its row and pages are freed now."""
        if self.requests.pop(rid, None) is not None and self.engine is not None:
            self.engine.finish(rid)

    def start(self):
        """Make the engine (the KV cache): at the first step(), or before, to learn early that it does not fit."""
        if self.engine is None:
            need = max((len(r.ids) + r.row.max_new - 1 for r in self.requests.values()), default=1)
            try:
                self.engine = Engine(self.model, max_len=self.max_len or need, **self.engine_args)
            except CacheTooSmall as e:
                raise InputError(str(e)) from None
            for rid, r in self.requests.items():
                self.engine.add(rid, r.ids)

    def step(self) -> list[Event]:
        """One forward pass: the next token of every running request (none while prompts are prefilled)."""
        self.start()
        ids, logits = self.engine.step()
        if not ids:
            return []
        reqs = [self.requests[rid] for rid in ids]
        for i, r in enumerate(reqs):  # just after a Wait, this sample may not end thinking (vLLM's min_tokens=1)
            if r.row.must_think and r.row.phase == "thinking":
                logits[i, list(r.forcing.think_end)] = float("-inf")
        sampled = sample(logits, vocab_limit=self.vocab_limit)  # greedy rows, all in one go
        for i, r in enumerate(reqs):
            if r.temperature > 0:  # one row at a time, each with its own generator
                sampled[i] = sample(logits[i:i + 1], r.temperature, r.top_k, r.top_p, self.vocab_limit, r.generator)[0]
        events = []
        for rid, r, s in zip(ids, reqs, sampled.tolist()):  # one sync a step
            token, forced, phase = next_token(r.row, s, r.forcing)
            events.append(Event(rid, token, forced, phase))
            if r.row.phase == "done":
                self.cancel(rid)
                events[-1].generation = self.generation(r)
            else:
                self.engine.append(rid, token)
        return events

    def generation(self, r: Request) -> Generation:
        row = r.row
        kept = row.tokens[:-1] if row.finish_reason == "stop" else row.tokens  # vLLM also leaves the stop token out
        text = self.tokenizer.decode(kept, skip_special_tokens=False)
        thinking, _, answer = text.partition(ANSWER) if starts_in_thinking(r.text) else ("", "", text)
        return Generation(prompt=r.text, text=text, thinking=thinking, answer=answer, token_ids=row.tokens,
                          forced=row.forced, thinking_tokens=row.thinking_tokens, waits=row.waits,
                          forced_answer=row.forced_answer, finish_reason=row.finish_reason)

    def close(self):
        if self.engine is not None:
            self.engine.close()
        self.engine, self.requests = None, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def submit_all(sampler, prompts: list, settings: dict, raw=False) -> list[int]:
    """Submit each prompt, a str or a dict {"prompt": str, ...its own PROMPT_SETTINGS}; a row without a seed
    of its own gets the call's seed + its index. A bad prompt raises InputError naming it."""
    ids = []
    for i, p in enumerate(prompts):
        own = dict(p) if isinstance(p, dict) else {"prompt": p}
        question = own.pop("prompt", None)
        if "seed" not in own and settings.get("seed") is not None:
            own["seed"] = settings["seed"] + i
        try:
            unknown = sorted(set(own) - set(PROMPT_SETTINGS))
            if unknown or not isinstance(question, str):
                raise InputError(f"unknown field {unknown[0]!r} (a prompt may set {', '.join(PROMPT_SETTINGS)})"
                                 if unknown else "needs a 'prompt' string")
            ids.append(sampler.submit(question, raw=raw, **{**settings, **own}))
        except InputError as e:
            raise InputError(f"prompt {i + 1}: {e}") from None
    return ids


def run_all(sampler, ids: list[int], on_token=None, on_finish=None) -> list[Generation]:
    """Step the sampler until it is idle; returns the generations of `ids`, in their order."""
    index, out = {rid: i for i, rid in enumerate(ids)}, [None] * len(ids)
    while sampler.busy:
        for e in sampler.step():
            if on_token is not None:
                on_token(index[e.id], e.token, e.forced, e.phase)
            if e.generation is not None:
                out[index[e.id]] = e.generation
                if on_finish is not None:
                    on_finish(index[e.id], e.generation)
    return out


def generate(model, tokenizer, prompts: list, *, max_new_tokens=MAX_NEW_TOKENS,
             max_thinking_tokens=MAX_THINKING_TOKENS, wait=WAIT, wait_str=WAIT_STR, temperature=TEMPERATURE,
             top_k=TOP_K, top_p=TOP_P, seed=None, raw=False, compile=False, on_token=None, on_finish=None,
             batch_size=BATCH_SIZE, kv_cache_gb=KV_CACHE_GB) -> list[Generation]:
    """
    Answer questions with budget forcing: up to batch_size rows decode together, the others join as rows
    finish. Each prompt is a question (raw=True: the exact text to continue; budget forcing applies if
    it ends inside a think block), or a dict {"prompt": question, ...} that sets any of PROMPT_SETTINGS
    for its row. max_thinking_tokens: None, an int, or "auto" (the context left after ANSWER_RESERVE
    answer tokens). on_token(i, token_id, forced, phase) is called for every token of prompt i as it is
    decided; on_finish(i, generation) as soon as prompt i is done. Returns the generations in prompt order.
    """
    settings = dict(max_new_tokens=max_new_tokens, max_thinking_tokens=max_thinking_tokens, wait=wait,
                    wait_str=wait_str, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    check_settings(**settings)
    with Sampler(model, tokenizer, batch_size=batch_size, kv_cache_gb=kv_cache_gb, compile=compile) as sampler:
        return run_all(sampler, submit_all(sampler, prompts, settings, raw), on_token, on_finish)


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


def read_prompts(args, settings: dict) -> list:
    """
    Arguments, else --file (text lines or jsonl), else stdin when piped, else the paper's question. A
    jsonl row may carry its own PROMPT_SETTINGS (e.g. max_thinking_tokens, wait); its other fields are
    ignored. Returns strs, and dicts {"prompt": ..., settings} for rows that set something.
    """
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
    name, prompts = args.file or "stdin", []
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{name} line {n}: not valid JSON ({e.msg})") from None
            q = next((row[k] for k in ("question", "prompt", "problem") if isinstance(row.get(k), str)), None)
            if q is None:
                raise InputError(f"{name} line {n}: no 'question', 'prompt' or 'problem' field")
            own = {k: row[k] for k in PROMPT_SETTINGS if k in row}
            for k, v in own.items():
                try:
                    check_settings(**{**settings, k: v})
                except InputError as e:
                    raise InputError(f"{name} line {n}: field {k!r}: {e}") from None
            prompts.append(dict(own, prompt=q) if own else q)
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
    p.add_argument("--file", help="questions, one a line, or jsonl with a 'question' field (and optionally its "
                   f"own {', '.join(PROMPT_SETTINGS)}); '-' for stdin")
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
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="most prompts decoded together; the others "
                   "join as rows finish")
    p.add_argument("--kv-cache-gb", type=float, default=KV_CACHE_GB, help="size of the paged KV cache (default: "
                   "most of the GPU memory left after the weights, a quarter of the free RAM on a CPU)")
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
                        top_p=args.top_p, seed=args.seed)
        check_settings(**settings)  # before the model loads: a typo costs seconds, not a 32B load
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {args.batch_size}")
        if args.kv_cache_gb is not None and not args.kv_cache_gb > 0:
            raise InputError(f"--kv-cache-gb must be positive, not {args.kv_cache_gb}")
        prompts = read_prompts(args, settings)
        if args.model == MODEL and not os.path.isdir(MODEL):
            raise InputError(f"no model at {MODEL}: run `python train.py --tiny` first (the README's first run) "
                             "or pass --model DIR_OR_HUB_ID")
        t0 = time.perf_counter()
        model, tokenizer = load_model(args.model, None if args.device == "auto" else args.device, args.dtype)
        load_s = time.perf_counter() - t0
        sampler = Sampler(model, tokenizer, batch_size=args.batch_size, kv_cache_gb=args.kv_cache_gb,
                          compile=args.compile)
        ids = submit_all(sampler, prompts, settings, args.raw)
        sampler.start()  # a bad prompt or a KV cache too small is refused before anything is printed
        stream = Stream(tokenizer) if len(prompts) == 1 and not args.json else None
        if stream:
            print(sampler.requests[ids[0]].text, end="", flush=True)
        finished, shown = {}, 0

        def show(i, g):  # print in prompt order, each as soon as it and those before it are done
            nonlocal shown
            finished[i] = g
            while shown in finished:
                g = finished.pop(shown)
                if args.json:
                    print(json.dumps(asdict(g), ensure_ascii=False), flush=True)
                elif stream:
                    stream.flush()
                    print()
                else:
                    print(f"=== {shown + 1} ===\n{g.prompt}{g.text}\n", flush=True)
                shown += 1

        t0 = time.perf_counter()
        gens = run_all(sampler, ids, on_token=stream, on_finish=show)
    except (InputError, CheckpointError) as e:
        fail(e)
    except KeyboardInterrupt:
        sys.exit(130)
    dt, n_steps = time.perf_counter() - t0, sampler.engine.steps
    sampler.close()
    n_tokens = sum(len(g.token_ids) for g in gens)
    # Each step reads every weight once, whatever the batch: that sets the speed limit on any hardware.
    gbps = weight_bytes_per_token(model) * n_steps / dt / 1e9
    g = gens[0]
    last = f"; thinking {g.thinking_tokens} tokens, {g.waits} waits, finish {g.finish_reason}" if stream else ""
    print(f"{n_tokens} tokens in {dt:.2f}s ({n_steps} steps): {n_tokens / dt:.1f} tokens/s, bandwidth achieved "
          f"{gbps:.2f} GB/s (model loaded in {load_s:.1f}s on {next(model.parameters()).device}){last}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
