"""
An OpenAI-compatible HTTP server for sample.py's Sampler, with s1's budget forcing, and a page that shows it.

    python serve.py --model out/s1          # the page at http://127.0.0.1:8000/, the API under /v1
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d \\
        '{"messages": [{"role": "user", "content": "How many r in raspberry?"}], "max_thinking_tokens": 512, "wait": 1}'

Endpoints: POST /v1/completions and /v1/chat/completions (server-sent events with "stream": true), GET
/v1/models, /health, and / (serve.html). Budget forcing rides on extra request fields with sample.py's names
and meanings: max_thinking_tokens (an int or "auto"), wait, wait_str (and top_k). Chat messages go through
the chat template, then <|im_start|>think, as in sample.py, so greedy output is sample.py's token for token;
/v1/completions continues its prompt as written (sample.py --raw), forcing only if it ends inside a think
block. A chat reply keeps the thinking ("reasoning_content", as reasoning-model APIs name it) apart from the
answer; usage counts thinking tokens, Waits and whether the budget cut the thinking (forced_answer);
streamed text that budget forcing wrote carries "forced": true.

One thread, the engine loop, owns the Sampler: between two steps it takes new requests into the batch and
drops those whose client went away. Past --batch-size rows requests wait; past --max-queue more, 429.
Defaults are s1's: temperature 0 (greedy), max_tokens the whole context. Stop strings end the answer only
(a "\\n\\n" would otherwise end the thinking at once). What it leaves out: logprobs, echo, n > 1, several
prompts in one request (send several requests: they join one batch), tools, token ids as prompts,
authentication (it listens on 127.0.0.1 unless --host says otherwise), compiling ahead of the first request.
"""

import argparse
import asyncio
import contextlib
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from functools import partial

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from model import CheckpointError
from sample import (ANSWER, KV_CACHE_GB, MAX_NEW_TOKENS, MAX_THINKING_TOKENS, TEMPERATURE, THINK, TOP_K, TOP_P,
                    WAIT, WAIT_STR, InputError, Sampler, check_settings, fail, load_model, starts_in_thinking)

# -----------------------------------------------------------------------------
# Defaults, spelled out once

HOST = "127.0.0.1"  # this machine only: the server has no authentication
PORT = 8000
BATCH_SIZE = 64  # most requests decoded together; the others wait for a row
MAX_QUEUE = 256  # requests that may wait for a row; more are answered 429
MAX_BODY_MB = 8.0  # larger request bodies are refused (413); a 32K-token prompt is about 0.15 MB of JSON
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")

# The request fields: OpenAI's that mean something here, and sample.py's budget forcing and top_k.
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options",
          "max_thinking_tokens", "wait", "wait_str", "user"}
FIELDS = {"completions": COMMON | {"prompt"}, "chat": COMMON | {"messages", "max_completion_tokens"}}
# OpenAI fields that do nothing here: accepted at the value that asks for nothing (clients send them), else 400.
NO_OP = {"n": 1, "best_of": 1, "echo": False, "logprobs": False, "top_logprobs": 0, "presence_penalty": 0,
         "frequency_penalty": 0, "logit_bias": {}, "suffix": None}
ROLES = ("system", "user", "assistant")
ENDPOINTS = "POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /"


class ApiError(Exception):
    """An answer with OpenAI's error body; the message says what is wrong and what to do."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param=None) -> JSONResponse:
    kind = {404: "not_found_error", 429: "rate_limit_error"}.get(status, "server_error" if status >= 500
                                                                   else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


# -----------------------------------------------------------------------------
# Reading a request


async def read_json(request, max_mb: float) -> dict:
    """The body as a JSON object; refused (413) as soon as it is longer than max_mb, whatever it claims."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_mb * 2**20:
            raise ApiError(413, f"the request body is over {max_mb:g} MB; send a shorter prompt (or start the "
                                "server with a larger --max-body-mb)")
    try:
        data = json.loads(body)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise ApiError(400, f"the body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object, e.g. {\"prompt\": \"...\"}")
    return data


def parse_settings(body: dict, endpoint: str) -> tuple[dict, list, bool, bool]:
    """Sampler.submit's settings, the stop strings, whether to stream, and whether a stream ends with usage."""
    for key, value in body.items():
        if key in NO_OP:  # the value that asks for nothing, of the right type (false is not 0)
            if value not in (None, NO_OP[key]) or isinstance(value, bool) != isinstance(NO_OP[key], bool):
                raise ApiError(400, f"{key}={json.dumps(value)} is not supported by this server; leave it out", key)
        elif key not in FIELDS[endpoint]:
            raise ApiError(400, f"unknown field {key!r}; this endpoint takes {', '.join(sorted(FIELDS[endpoint]))}",
                           key)
    get = lambda key, default: default if body.get(key) is None else body[key]  # noqa: E731  (null = not given)
    max_tokens = get("max_completion_tokens", get("max_tokens", MAX_NEW_TOKENS))
    if type(max_tokens) is not int or max_tokens < 1:  # checked here to name OpenAI's field, not sample.py's
        raise ApiError(400, f"max_tokens must be a positive integer, not {json.dumps(max_tokens)}", "max_tokens")
    settings = dict(max_new_tokens=max_tokens, max_thinking_tokens=get("max_thinking_tokens", MAX_THINKING_TOKENS),
                    wait=get("wait", WAIT), wait_str=get("wait_str", WAIT_STR), temperature=get("temperature",
                    TEMPERATURE), top_k=get("top_k", TOP_K), top_p=get("top_p", TOP_P), seed=get("seed", None))
    if not isinstance(settings["wait_str"], str):
        raise ApiError(400, f"wait_str must be a string such as \"Wait\", not {json.dumps(settings['wait_str'])}",
                       "wait_str")
    try:
        check_settings(**settings)
    except InputError as e:
        raise ApiError(400, str(e)) from None
    stop, stream, options = get("stop", []), get("stream", False), get("stream_options", {})
    stop = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "stop must be a string or a list of non-empty strings", "stop")
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, not {json.dumps(stream)}", "stream")
    if not (isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)):
        raise ApiError(400, "stream_options must be an object like {\"include_usage\": true}", "stream_options")
    return settings, stop, stream, options.get("include_usage", False)


def chat_prompt(tokenizer, messages) -> str:
    """The chat template over the conversation, then <|im_start|>think: sample.py's build_prompt for messages."""
    if not (isinstance(messages, list) and messages):
        raise ApiError(400, "messages must be a non-empty list, e.g. [{\"role\": \"user\", \"content\": \"...\"}]",
                       "messages")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ApiError(400, f"messages[{i}] must be an object {{\"role\": one of {', '.join(ROLES)}, "
                                "\"content\": text}", "messages")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + THINK
    except Exception as e:  # no template, or its own checks (jinja's TemplateError), e.g. roles that do not alternate
        raise ApiError(400, f"the model's chat template refused these messages ({e}); use /v1/completions with the "
                            "prompt written out", "messages") from None


# -----------------------------------------------------------------------------
# The text of one reply, as its tokens come


def held_back(text: str, strings) -> int:
    """How many characters at the end of text could be the start of one of strings (they must wait)."""
    return max((k for s in strings for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


class Reply:
    """
    One prompt's output as it streams: whole characters only; the thinking apart from the answer, split at
    <|im_start|>answer as sample.py's Generation splits them (keep_tag: the tag stays in the answer's text,
    so the two make Generation.text); forced text marked; stop strings cut the answer. add() returns the
    pieces (part, text, forced) now final: text that may still turn out to begin the tag or a stop string
    is held back until the next token says.
    """

    def __init__(self, tokenizer, thinking: bool, stop: list, keep_tag: bool):
        self.tok, self.stop, self.keep_tag = tokenizer, stop, keep_tag
        self.part = "thinking" if thinking else "answer"
        self.tag_first = thinking and keep_tag  # the answer's text will begin with the tag
        self.pending, self.pending_forced = [], False  # token ids that do not make whole characters yet
        self.unsent = []  # [(text, forced)] of the current part, held back
        self.text = {"thinking": "", "answer": ""}  # all that was sent
        self.tokens = self.prompt_tokens = 0  # completion tokens count forced ones and the final stop token
        self.finish_reason = None  # "stop" or "length": no more text
        self.generation = None  # sample.py's Generation, for the counts, once the Sampler is done with it

    def add(self, token: int, forced: bool, last=None) -> list:
        """Take the next token; `last` is the Generation when it is the last one."""
        self.tokens += 1
        pieces = []
        if self.pending and forced != self.pending_forced:  # never mix forced and sampled text in a piece
            pieces += self.push(self.tok.decode(self.pending, skip_special_tokens=False), self.pending_forced)
            self.pending = []
        if not (last is not None and last.finish_reason == "stop"):  # the final <|im_end|> is counted, not shown
            self.pending, self.pending_forced = self.pending + [token], forced
        text = self.tok.decode(self.pending, skip_special_tokens=False)
        # Half a UTF-8 character decodes to U+FFFD: wait for the rest (no character takes more than 4 bytes).
        if self.pending and (last is not None or not text.endswith("\ufffd") or len(self.pending) >= 4):
            pieces += self.push(text, forced)
            self.pending = []
        if last is not None and self.finish_reason is None:  # nothing comes after: send what was held back
            pieces += self.send(sum(len(t) for t, _ in self.unsent))
            self.finish_reason = last.finish_reason
        return [p for p in pieces if p[1]]

    def push(self, text: str, forced: bool) -> list:
        if self.finish_reason is not None:
            return []
        self.unsent.append((text, forced))
        held, pieces = "".join(t for t, _ in self.unsent), []
        if self.part == "thinking":
            head, tag, tail = held.partition(ANSWER)
            if not tag:
                return self.send(len(held) - held_back(held, [ANSWER]))
            pieces = self.send(len(head))
            self.part, self.unsent = "answer", [(tag + tail if self.keep_tag else tail, forced)]
            held = "".join(t for t, _ in self.unsent)
        start = len(ANSWER) if self.tag_first and not self.text["answer"] else 0  # a stop string never cuts the tag
        cut = min((i for i in (held.find(s, start) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return pieces + self.send(cut)
        return pieces + self.send(len(held) - held_back(held, self.stop))

    def send(self, n: int) -> list:
        """The first n held-back characters of the current part, as pieces; the rest stays held back."""
        pieces = []
        while n > 0 and self.unsent:
            text, forced = self.unsent.pop(0)
            if len(text) > n:
                self.unsent.insert(0, (text[n:], forced))
                text = text[:n]
            pieces.append((self.part, text, forced))
            self.text[self.part] += text
            n -= len(text)
        if self.finish_reason is not None:
            self.unsent = []
        return pieces


def usage(r: Reply) -> dict:
    """OpenAI's usage, and budget forcing's counts (thinking_tokens also as OpenAI's reasoning_tokens)."""
    g = r.generation
    return dict(prompt_tokens=r.prompt_tokens, completion_tokens=r.tokens, total_tokens=r.prompt_tokens + r.tokens,
                completion_tokens_details={"reasoning_tokens": g.thinking_tokens}, thinking_tokens=g.thinking_tokens,
                waits=g.waits, forced_answer=g.forced_answer)


# -----------------------------------------------------------------------------
# The engine loop: one thread drives the Sampler


@dataclass(eq=False)
class Job:
    """One HTTP request's prompt, shared by its handler and the engine loop."""
    prompt: str  # the text the model continues (for chat: the template applied)
    settings: dict  # Sampler.submit's
    outbox: asyncio.Queue  # (job, kind, value) for the handler
    rid: int | None = None  # its id in the Sampler, once submitted


class EngineLoop:
    """
    The only code that touches the Sampler, in a thread of its own. Handlers (on the asyncio event loop)
    put ("submit", job) or ("cancel", job) in the inbox. Each turn takes every command that has come in,
    steps once, and sends back to the event loop, in one call, what happened:
      (job, "accepted", prompt tokens)  or  (job, "error", message)
      (job, "token", sample.Event)       each token; the last carries the Generation
      (job, "cancelled", Generation)     a cancelled job that was still running, with its counts so far
    """

    def __init__(self, sampler: Sampler):
        self.sampler, self.inbox, self.loop = sampler, queue.SimpleQueue(), None
        self.jobs = {}  # Sampler id -> Job, while it runs
        self.counts = (0, 0)  # (running, waiting), for /health
        self.thread = threading.Thread(target=self.run, name="engine loop", daemon=True)

    def start(self, loop):
        self.loop = loop
        self.thread.start()

    def stop(self):
        self.inbox.put(None)
        self.thread.join()
        self.sampler.close()

    def run(self):
        while True:
            commands = [] if self.sampler.busy else [self.inbox.get()]  # idle: sleep until a command comes
            with contextlib.suppress(queue.Empty):
                while True:
                    commands.append(self.inbox.get_nowait())
            out = []
            for command in commands:
                if command is None:
                    return
                (self.submit if command[0] == "submit" else self.cancel)(command[1], out)
            if self.sampler.busy:
                try:
                    events = self.sampler.step()
                except Exception as e:  # a bug, or out of memory: fail the requests in flight, keep serving
                    traceback.print_exc()
                    out += [(job, "error", f"the engine failed ({type(e).__name__}: {e}); see the server's log")
                            for job in self.jobs.values()]
                    for rid in list(self.jobs):
                        with contextlib.suppress(Exception):
                            self.sampler.cancel(rid)
                    self.jobs, events = {}, []
                for e in events:
                    out.append((self.jobs[e.id], "token", e))
                    if e.generation is not None:
                        del self.jobs[e.id]
            engine = self.sampler.engine
            self.counts = (len(engine.running), len(engine.waiting)) if engine is not None else (0, 0)
            if out:
                self.loop.call_soon_threadsafe(deliver, out)

    def submit(self, job, out):
        try:
            job.rid = self.sampler.submit(job.prompt, raw=True, **job.settings)
        except InputError as e:  # a prompt longer than the context, a wait_str the tokenizer cannot write, ...
            return out.append((job, "error", str(e)))
        self.jobs[job.rid] = job
        out.append((job, "accepted", len(self.sampler.requests[job.rid].ids)))

    def cancel(self, job, out):
        if self.jobs.pop(job.rid, None) is not None:  # still running (not finished, not cancelled before)
            out.append((job, "cancelled", self.sampler.generation(self.sampler.requests[job.rid])))
            self.sampler.cancel(job.rid)


def deliver(items):
    """On the event loop: each item to its request's queue."""
    for item in items:
        item[0].outbox.put_nowait(item)


# -----------------------------------------------------------------------------
# The HTTP side


class Api:
    """The handlers: check a request, hand its prompt to the engine loop, turn what comes back into OpenAI's
    replies. They all run on the one asyncio event loop, so `active` needs no lock."""

    def __init__(self, engine: EngineLoop, name: str, max_queue: int, max_body_mb: float):
        self.engine, self.tokenizer, self.name = engine, engine.sampler.tokenizer, name
        self.limit, self.max_body_mb = engine.sampler.engine.batch_size + max_queue, max_body_mb
        self.active = 0  # requests in flight (running or waiting for a row)
        self.card = dict(id=name, object="model", created=int(time.time()), owned_by="s1",
                         max_model_len=engine.sampler.model.config.max_position_embeddings)
        with open(PAGE) as f:
            self.page = f.read()

    async def run(self, request, prompt: str, settings: dict, stop: list, keep_tag: bool):
        """
        Submit the prompt and follow it. Yields its Reply once the Sampler has taken it (if it refuses it:
        ApiError), then each list of pieces of text as they come, until reply.generation is set. Whenever it
        stops early (the client went away, or the handler stopped reading), the prompt is cancelled.
        """
        if self.active >= self.limit:
            raise ApiError(429, f"the server is busy: {self.active} requests in flight, at most {self.limit}; "
                                "retry in a moment")
        job = Job(prompt, settings, asyncio.Queue())
        reply = Reply(self.tokenizer, starts_in_thinking(prompt), stop, keep_tag)
        self.active += 1
        watcher = asyncio.create_task(self.watch(request, job))
        try:
            self.engine.inbox.put(("submit", job))
            _, kind, value = await job.outbox.get()
            if kind == "gone":
                return
            if kind == "error":
                raise ApiError(400, value)
            reply.prompt_tokens = value
            yield reply
            while reply.generation is None:
                _, kind, value = await job.outbox.get()
                if kind == "gone":
                    return
                if kind == "error":
                    raise ApiError(500, value)
                pieces, last = [], value if kind == "cancelled" else value.generation
                if kind == "token" and reply.finish_reason is None:
                    pieces = reply.add(value.token, value.forced, last)
                    if reply.finish_reason == "stop" and last is None:  # a stop string: free the row now
                        self.engine.inbox.put(("cancel", job))
                reply.generation = last  # the counts of a job cancelled by its stop string: as it was cancelled
                if pieces:
                    yield pieces
        finally:
            watcher.cancel()
            if reply.generation is None:
                self.engine.inbox.put(("cancel", job))
            self.active -= 1

    async def watch(self, request, job):
        """Wait for the client to go away (its body is read by now), then wake its handler, which stops."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.outbox.put_nowait((job, "gone", None))

    async def respond(self, request, endpoint: str):
        body = await read_json(request, self.max_body_mb)
        settings, stop, stream, include_usage = parse_settings(body, endpoint)
        if endpoint == "chat":
            prompt = chat_prompt(self.tokenizer, body.get("messages"))
        else:
            prompt = body.get("prompt")
            prompt = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else prompt
            if not isinstance(prompt, str):
                raise ApiError(400, "prompt must be a string: one prompt a request (send several requests at once: "
                                    "they join one batch), text rather than token ids", "prompt")
        events = self.run(request, prompt, settings, stop, keep_tag=endpoint == "completions")
        reply = await anext(events)  # the prompt is taken, or ApiError (400, 429) before a byte is sent
        head = dict(id=f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", created=int(time.time()),
                    model=self.name)
        if stream:
            return StreamingResponse(self.stream(events, reply, head, endpoint == "chat", include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        async with contextlib.aclosing(events):
            async for _ in events:
                pass
        if reply.generation is None:  # the client went away: nobody reads this
            return JSONResponse({}, 499)
        if endpoint == "chat":
            message = dict(role="assistant", content=reply.text["answer"], reasoning_content=reply.text["thinking"])
            choice = dict(index=0, message=message, finish_reason=reply.finish_reason)
            return JSONResponse(dict(head, object="chat.completion", choices=[choice], usage=usage(reply)))
        choice = dict(index=0, text=reply.text["thinking"] + reply.text["answer"], logprobs=None,
                      finish_reason=reply.finish_reason)
        return JSONResponse(dict(head, object="text_completion", choices=[choice], usage=usage(reply)))

    async def stream(self, events, reply, head, chat: bool, include_usage: bool):
        """Server-sent events: a chunk per piece of text, one with the finish reason, usage if asked, [DONE]."""
        head = dict(head, object="chat.completion.chunk" if chat else "text_completion")

        def sse(obj):
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def chunk(text=None, forced=False, part="answer", finish_reason=None):
            if chat:  # the thinking streams as reasoning_content, the answer as content
                delta = {} if text is None else {"reasoning_content" if part == "thinking" else "content": text}
                c = dict(index=0, delta=delta, finish_reason=finish_reason)
            else:
                c = dict(index=0, text=text or "", logprobs=None, finish_reason=finish_reason)
            if forced:  # budget forcing wrote this, not the model
                (c["delta"] if chat else c)["forced"] = True
            return sse(dict(head, choices=[c]))

        async with contextlib.aclosing(events):
            if chat:
                yield sse(dict(head, choices=[dict(index=0, delta=dict(role="assistant", content=""),
                                                   finish_reason=None)]))
            try:
                async for pieces in events:
                    for part, text, forced in pieces:
                        yield chunk(text, forced, part)
            except ApiError as e:  # the engine failed mid-stream: the status is sent already, so say it here
                yield sse({"error": {"message": e.message, "type": "server_error", "param": None, "code": None}})
                return
            if reply.generation is not None:
                yield chunk(finish_reason=reply.finish_reason)
                if include_usage:
                    yield sse(dict(head, choices=[], usage=usage(reply)))
                yield "data: [DONE]\n\n"


def make_app(model, tokenizer, name: str, *, batch_size=BATCH_SIZE, kv_cache_gb=KV_CACHE_GB, max_queue=MAX_QUEUE,
             max_body_mb=MAX_BODY_MB, compile=False) -> Starlette:
    """The server for one model: its Sampler holds any request the context allows. Raises InputError if the
    KV cache cannot hold even one (the message names the --kv-cache-gb that would)."""
    sampler = Sampler(model, tokenizer, batch_size=batch_size, kv_cache_gb=kv_cache_gb, compile=compile,
                      max_len=model.config.max_position_embeddings)
    sampler.start()  # the KV cache now, so that a server that cannot hold a request never starts
    engine = EngineLoop(sampler)
    api = Api(engine, name, max_queue, max_body_mb)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start(asyncio.get_running_loop())
        yield
        engine.stop()

    async def health(request):
        running, waiting = engine.counts
        return JSONResponse(dict(status="ok", model=name, running=running, waiting=waiting, in_flight=api.active))

    handlers = {  # every error in OpenAI's form: ours, Starlette's (unknown path, wrong method), and bugs
        ApiError: lambda request, e: error_response(e.status, e.message, e.param),
        HTTPException: lambda request, e: error_response(e.status_code, f"{request.method} {request.url.path}: "
                                                         f"{e.detail}; the endpoints are {ENDPOINTS}"),
        Exception: lambda request, e: error_response(500, f"internal error ({type(e).__name__}: {e}); see the "
                                                     "server's log")}
    routes = [Route("/v1/completions", partial(api.respond, endpoint="completions"), methods=["POST"]),
              Route("/v1/chat/completions", partial(api.respond, endpoint="chat"), methods=["POST"]),
              Route("/v1/models", lambda request: JSONResponse(dict(object="list", data=[api.card]))),
              Route("/health", health), Route("/", lambda request: HTMLResponse(api.page))]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.api = api
    return app


# -----------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="An OpenAI-compatible server with s1 budget forcing, and a page to "
                                "watch it.")
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: this machine only; "
                   "0.0.0.0 for every interface: there is no authentication)")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--name", help="the model's name in replies and /v1/models (default: --model)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="most requests decoded together")
    p.add_argument("--max-queue", type=int, default=MAX_QUEUE, help="requests that may wait for a row; more get 429")
    p.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB, help="larger request bodies get 413")
    p.add_argument("--kv-cache-gb", type=float, default=KV_CACHE_GB, help="size of the paged KV cache (default: "
                   "most of the GPU memory left after the weights, a quarter of the free RAM on a CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    p.error = fail  # one line and exit code 2 for every bad argument, argparse's own errors included
    return p.parse_args(argv)


def main(argv=None):
    import uvicorn

    args = parse_args(argv)
    for flag, value, ok, rule in (("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
                                  ("--max-queue", args.max_queue, args.max_queue >= 0, "at least 0"),
                                  ("--port", args.port, 0 <= args.port < 65536, "in 0..65535"),
                                  ("--max-body-mb", args.max_body_mb, args.max_body_mb > 0, "positive"),
                                  ("--kv-cache-gb", args.kv_cache_gb, args.kv_cache_gb is None or args.kv_cache_gb > 0,
                                   "positive")):
        if not ok:
            fail(f"{flag} must be {rule}, not {value}")
    try:
        model, tokenizer = load_model(args.model, None if args.device == "auto" else args.device, args.dtype)
        app = make_app(model, tokenizer, args.name or args.model, batch_size=args.batch_size,
                       kv_cache_gb=args.kv_cache_gb, max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                       compile=args.compile)
    except (InputError, CheckpointError) as e:
        fail(e)
    engine = app.state.api.engine.sampler.engine
    print(f"serving {args.name or args.model} on http://{args.host}:{args.port} (the page at /, the API under /v1): "
          f"{engine.batch_size} rows, a KV cache of {engine.n_pages * engine.page_size} tokens on {engine.device}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
