"""
serve.py against independent references: the official openai client talks to it, and what it answers must
be what sample.py's generate() gives for the same request, token for token (greedy). Budget forcing is
checked on test_sample.py's scripted model, whose every Wait and cut is known in advance; a random tiny
Qwen2 checkpoint is served by `python serve.py` itself. Servers run on a free port of 127.0.0.1 (uvicorn in
a thread, or a subprocess) and are stopped when each test ends; the page is loaded in a headless chromium
where playwright and a chromium are installed (skipped elsewhere), and lm-evaluation-harness runs a task
against the server where it is installed (skipped elsewhere).
"""

import contextlib
import json
import os
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn
from conftest import ROOT, make_tiny_checkpoint
from test_sample import IM_END, IM_START, SWEEP, ScriptedLM, ids, tok  # noqa: F401  (tok: a byte-level tokenizer)

import sample
import serve
from model import Qwen2

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running(app):
    """Serve app with uvicorn in a thread on a free port; yields its base URL; stops it (and its engine loop)."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]))
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive() and not app.state.api.engine.thread.is_alive()


class SlowScriptedLM(ScriptedLM):
    """The scripted model, a few milliseconds a step: long enough for requests to overlap."""

    def forward(self, *args, **kwargs):
        time.sleep(0.005)
        return super().forward(*args, **kwargs)


def scripted(tok, cases, slow=False, **kw):
    """A server on a scripted model that knows cases [(prompt, script)]; a prompt is chat's (the template is
    applied) unless it starts with <|im_start|> (sent as it is, to /v1/completions). Returns (model, app)."""
    texts = [p if p.startswith("<|im_start|>") else sample.build_prompt(tok, p) for p, _ in cases]
    model = (SlowScriptedLM if slow else ScriptedLM)([tok.encode(t, add_special_tokens=False) for t in texts],
                                                      [s for _, s in cases])
    return model, serve.make_app(model, tok, "scripted", **kw)


def alone(tok, prompt, script, raw=False, **settings):
    """sample.py's generate() on this one prompt: the reference."""
    text = prompt if raw else sample.build_prompt(tok, prompt)
    model = ScriptedLM([tok.encode(text, add_special_tokens=False)], [script])
    return sample.generate(model, tok, [prompt], raw=raw, **settings)[0]


def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def extra(obj, key):
    return (obj.model_extra or {}).get(key)


# The budget-forcing cases of test_sample.py: two Waits then a natural end; a budget that cuts the thinking.
WAITS = ("How many r in raspberry?", ids("a") + [IM_START] + [0] * 3 + [IM_END] + [IM_END] + [0] * 3 + ids("b")
         + [IM_START] + [0] * 6 + ids(" 42") + [IM_END] + ids("never"), dict(wait=2))
BUDGET = ("second question", ids("c") + [IM_START] + [0] * 3 + ids("defghijk") + [0] * 17 + ids("22") + [IM_END],
          dict(wait=1, max_thinking_tokens=8))


def test_chat_gives_sample_pys_tokens_with_budget_forcing(tok):
    _, app = scripted(tok, [WAITS[:2], BUDGET[:2]])
    with running(app) as url:
        c = client(url)
        for question, script, settings in (WAITS, BUDGET):
            g = alone(tok, question, script, **settings)
            messages = [{"role": "user", "content": question}]
            r = c.chat.completions.create(model="s1", messages=messages, max_tokens=40, extra_body=settings)
            m, u = r.choices[0].message, r.usage
            assert (extra(m, "reasoning_content"), m.content, r.choices[0].finish_reason) == (g.thinking, g.answer,
                                                                                              g.finish_reason)
            assert (u.completion_tokens, u.completion_tokens_details.reasoning_tokens) == (len(g.token_ids),
                                                                                           g.thinking_tokens)
            assert (extra(u, "thinking_tokens"), extra(u, "waits"), extra(u, "forced_answer")) == (
                g.thinking_tokens, g.waits, g.forced_answer)
            assert u.prompt_tokens == len(tok.encode(g.prompt, add_special_tokens=False))
            # streamed: the same text in pieces, and the pieces budget forcing wrote are marked
            chunks = list(c.chat.completions.create(model="s1", messages=messages, max_tokens=40, stream=True,
                                                    stream_options={"include_usage": True}, extra_body=settings))
            deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
            thinking = [(extra(d, "reasoning_content"), bool(extra(d, "forced"))) for d in deltas
                        if extra(d, "reasoning_content")]
            answer = [(d.content, bool(extra(d, "forced"))) for d in deltas if d.content]
            assert "".join(t for t, _ in thinking) == g.thinking and "".join(t for t, _ in answer) == g.answer
            forced = "".join(tok.decode([t]) for t, f in zip(g.token_ids, g.forced) if f)
            assert "".join(t for t, f in thinking + answer if f) == forced.replace(sample.ANSWER, "")
            assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == g.finish_reason
            assert chunks[-1].usage.model_dump() == u.model_dump()
    assert g.forced_answer and "Wait" in forced  # the cases did force


def test_completions_continue_the_prompt_as_it_is_and_stop_strings_cut_the_answer(tok):
    think = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<|im_start|>think"
    plain = ("<|im_start|>Once upon", ids(" a time<|x") + [IM_END])
    thinking = (think, ids("a") + [IM_END] + [0] * 3 + ids("b") + [IM_END] + [0] * 6 + ids(" x. y. z.") + [IM_END])
    utf8 = ("<|im_start|>Say", list(" café €".encode()) + [IM_END])  # characters of 2 and 3 byte tokens
    _, app = scripted(tok, [plain, thinking, utf8])
    with running(app) as url:
        c = client(url)
        pieces = [ch.choices[0].text for ch in c.completions.create(model="s1", prompt=utf8[0], stream=True)]
        assert "".join(pieces) == " café €" and not any("\ufffd" in p for p in pieces), pieces  # whole characters
        g = alone(tok, *plain, raw=True, wait=1)
        r = c.completions.create(model="s1", prompt=plain[0], max_tokens=30, extra_body=dict(wait=1))
        assert r.choices[0].text == g.text == " a time<|x" and r.usage.completion_tokens == len(g.token_ids)
        assert extra(r.usage, "waits") == 0  # no think block, nothing to force
        r = c.completions.create(model="s1", prompt=plain[0], max_tokens=30, stop=["time"])
        assert (r.choices[0].text, r.choices[0].finish_reason) == (" a ", "stop")
        g = alone(tok, *thinking, raw=True, wait=1, max_new_tokens=30)
        r = c.completions.create(model="s1", prompt=[thinking[0]], max_tokens=30, extra_body=dict(wait=1))
        assert r.choices[0].text == g.text == "aWaitb<|im_start|>answer x. y. z." and extra(r.usage, "waits") == 1
        # a stop string ends the answer (never the thinking: "a" is in it), and the row is freed at once
        stop = ["a", ". y"]
        r = c.completions.create(model="s1", prompt=thinking[0], max_tokens=30, stop=stop, extra_body=dict(wait=1))
        assert (r.choices[0].text, r.choices[0].finish_reason) == ("aWaitb<|im_start|>answer x", "stop")
        assert r.usage.completion_tokens == len(tok.encode("aWaitb<|im_start|>answer x. y", add_special_tokens=False))
        chunks = list(c.completions.create(model="s1", prompt=thinking[0], max_tokens=30, stop=stop, stream=True,
                                           extra_body=dict(wait=1)))
        assert "".join(ch.choices[0].text for ch in chunks) == "aWaitb<|im_start|>answer x"
        assert app.state.api.engine.counts == (0, 0) and not app.state.api.engine.sampler.busy


def test_requests_join_the_running_batch_and_give_what_they_give_alone(tok):
    cases = [(q, s) for q, s, _ in SWEEP]
    model, app = scripted(tok, cases, slow=True)
    expected = [alone(tok, q, s, **{"max_new_tokens": 40, **kw}) for q, s, kw in SWEEP]

    def ask(i):
        q, _, kw = SWEEP[i]
        r = client(url).chat.completions.create(model="s1", messages=[{"role": "user", "content": q}],
                                                max_tokens=kw.pop("max_new_tokens", 40), extra_body=kw)
        return extra(r.choices[0].message, "reasoning_content"), r.choices[0].message.content, r.usage.completion_tokens

    with running(app) as url:
        # the first request streams; once its first token is out, the others arrive and join its batch
        first = client(url).chat.completions.create(model="s1", messages=[{"role": "user", "content": SWEEP[2][0]}],
                                                    max_tokens=40, stream=True, extra_body=dict(max_thinking_tokens=8))
        pieces = [next(iter(first))]
        with ThreadPoolExecutor(4) as pool:
            others = list(pool.map(ask, [0, 1, 3, 4]))
        pieces += list(first)
    for (thinking, answer, n), g in zip(others, [expected[i] for i in (0, 1, 3, 4)]):
        assert (thinking, answer, n) == (g.thinking, g.answer, len(g.token_ids))
    deltas = [p.choices[0].delta for p in pieces if p.choices]
    assert "".join(extra(d, "reasoning_content") or "" for d in deltas) == expected[2].thinking
    assert "".join(d.content or "" for d in deltas) == expected[2].answer
    assert max(model.seen_batch_sizes) >= 3  # they did decode together


def test_a_client_that_goes_away_frees_its_row_at_once(tok):
    forever = ("think forever", [])  # the scripted model thinks 'z' until max_tokens
    model, app = scripted(tok, [forever], slow=True)
    engine = app.state.api.engine
    body = dict(messages=[{"role": "user", "content": forever[0]}], max_tokens=400)
    with running(app) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=dict(body, stream=True), timeout=30) as r:
            lines = r.iter_lines()
            assert [next(lines) for _ in range(6)][-2].startswith("data: ")  # a few tokens in
        steps = len(model.seen_batch_sizes)
        wait_until(lambda: not engine.sampler.busy and app.state.api.active == 0)
        assert len(model.seen_batch_sizes) < steps + 10  # stopped within a few steps, not after 400 tokens
        # a request without streaming whose client gives up (a timeout) is cancelled as well
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5)
        wait_until(lambda: not engine.sampler.busy and app.state.api.active == 0)
        assert len(model.seen_batch_sizes) < steps + 200
        assert len(engine.sampler.engine.free) == engine.sampler.engine.n_pages  # every page back
        assert httpx.get(url + "/health").json() == dict(status="ok", model="scripted", running=0, waiting=0,
                                                         in_flight=0)


def wait_until(condition, timeout=10.0):
    t0 = time.perf_counter()
    while not condition():
        assert time.perf_counter() - t0 < timeout, "timed out"
        time.sleep(0.01)


def test_a_full_queue_answers_429_and_the_server_goes_on(tok):
    forever = ("think forever", [])
    _, app = scripted(tok, [forever], slow=True, batch_size=1, max_queue=1)
    body = dict(messages=[{"role": "user", "content": forever[0]}], max_tokens=100, stream=True)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body), \
                http.stream("POST", "/v1/chat/completions", json=body) as waiting:
            assert waiting.status_code == 200  # one row and one place in the queue: both taken
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            assert "retry" in r.json()["error"]["message"]
        wait_until(lambda: app.state.api.active == 0)
        assert http.post("/v1/chat/completions", json=dict(body, max_tokens=3, stream=False)).status_code == 200


# -----------------------------------------------------------------------------
# Bad input: an OpenAI-style error body, status 400 (413 for a body too large), and the server goes on


@pytest.fixture(scope="module")
def small_server(tok):
    _, app = scripted(tok, [("q", ids("ok") + [IM_END] + [0] * 6 + ids("fine") + [IM_END])], max_body_mb=0.01)
    with running(app) as url:
        yield url


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "must be a JSON object"),
    ("/v1/completions", {"prompt": "q", "max_tokens": -1}, 400, "max_tokens must be a positive integer, not -1"),
    ("/v1/completions", {"prompt": "q", "max_thinking_tokens": -5}, 400, "max thinking tokens must be a positive"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "wait": "two"}, 400,
     "wait must be 0 or more"),
    ("/v1/completions", {"prompt": "q", "temperature": "hot"}, 400, "temperature must be >= 0"),
    ("/v1/completions", {"prompt": "q", "stop": [1]}, 400, "stop must be a string or a list of non-empty strings"),
    ("/v1/completions", {"prompt": "q", "wait": 1, "wait_str": 3}, 400, "wait_str must be a string"),
    ("/v1/completions", {"prompt": "q", "stream": "yes"}, 400, "stream must be true or false"),
    ("/v1/completions", {"prompt": "q", "max_thinking": 5}, 400, "unknown field 'max_thinking'; this endpoint takes"),
    ("/v1/completions", {"prompt": "q", "n": 2}, 400, "n=2 is not supported"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "text rather than token ids"),
    ("/v1/completions", {"prompt": "x" * 600}, 400, "the prompt is 600 tokens but the model's context is 512"),
    ("/v1/completions", {"prompt": ["q", "r"]}, 400, "one prompt a request (send several requests at once"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0] must be"),
    ("/v1/chat/completions", {"prompt": "q"}, 400, "unknown field 'prompt'"),
    ("/v1/completions", {"prompt": "x" * 20000}, 413, "over 0.01 MB"),
    ("/v1/completions", (b"x" * 1000 for _ in range(20)), 413, "over 0.01 MB"),  # chunked: no length given
    ("/v1/nothing", {}, 404, "the endpoints are"),
    ("/v1/models", {}, 405, "the endpoints are"),
])
def test_bad_requests_get_an_openai_error_that_says_what_to_fix(small_server, path, body, status, fragment):
    kw = dict(json=body) if isinstance(body, dict) else dict(content=body)
    r = httpx.post(small_server + path, timeout=30, **kw)
    error = r.json()["error"]
    assert r.status_code == status and fragment in error["message"], error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    # and the server goes on serving
    r = client(small_server).chat.completions.create(model="s1", messages=[{"role": "user", "content": "q"}])
    assert r.choices[0].message.content == "fine" and extra(r.choices[0].message, "reasoning_content") == "ok"


# -----------------------------------------------------------------------------
# `python serve.py` on a checkpoint


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tok):
    path, _ = make_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "model", vocab_size=272)  # 13 padding rows
    tok.save_pretrained(path)
    return path


def test_serve_py_answers_as_sample_py_decodes(tiny_model, tok, capsys, monkeypatch):
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(kw, app=app))  # serve it here instead
    serve.main(["--model", tiny_model])
    assert (served["host"], served["port"]) == ("127.0.0.1", 8000)  # this machine only, unless --host says otherwise
    assert "serving" in capsys.readouterr().err
    model = Qwen2.from_pretrained(tiny_model)
    with running(served["app"]) as url:
        c = client(url)
        assert [m.id for m in c.models.list().data] == [tiny_model]
        settings = dict(wait=1, max_thinking_tokens=12)
        g = sample.generate(model, tok, ["Hi"], max_new_tokens=40, **settings)[0]
        r = c.chat.completions.create(model="s1", messages=[{"role": "user", "content": "Hi"}], max_tokens=40,
                                      extra_body=settings)
        m = r.choices[0].message
        assert (extra(m, "reasoning_content"), m.content) == (g.thinking, g.answer)
        assert (r.usage.completion_tokens, extra(r.usage, "forced_answer")) == (len(g.token_ids), g.forced_answer)
        g = sample.generate(model, tok, ["Once upon a time", "The end"], raw=True, max_new_tokens=16)
        for prompt, x in zip(["Once upon a time", "The end"], g):
            assert c.completions.create(model="s1", prompt=prompt, max_tokens=16).choices[0].text == x.text
        chunks = c.completions.create(model="s1", prompt="Once upon a time", max_tokens=16, stream=True)
        assert "".join(ch.choices[0].text for ch in chunks) == g[0].text
        assert "<title>s1: budget forcing, live</title>" in httpx.get(url + "/").text


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "/no/such/dir"], "no such directory"),
    (["--model", "m", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--model", "m", "--max-body-mb", "-1"], "--max-body-mb must be positive"),
    (["--port", "80"], "the following arguments are required: --model"),
])
def test_bad_command_lines_are_one_line_and_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        serve.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


# -----------------------------------------------------------------------------
# The page in a real browser, and an evaluation harness as a client


def test_the_page_streams_the_thinking_the_waits_and_the_answer(tok, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("needs a chromium")
    question, script, _ = WAITS
    g = alone(tok, question, script, wait=2, max_new_tokens=40)
    _, app = scripted(tok, [(question, script)], slow=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with running(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(viewport={"width": 860, "height": 560})
            page.goto(url + "/")
            page.fill("#q", question)
            page.fill("#wait", "2")
            page.fill("#max_tokens", "40")
            page.click("#go")
            page.wait_for_function("document.getElementById('stats').textContent.includes('finish')", timeout=30000)
            assert page.text_content("#thinking") == g.thinking
            assert page.text_content("#answer") == g.answer.lstrip("\n")  # the page drops the newline after "answer"
            assert page.locator("#thinking mark").all_text_contents() == ["Wait", "Wait"]  # highlighted
            stats = page.text_content("#stats")
            assert f"{len(g.token_ids)} tokens ({g.thinking_tokens} thinking)" in stats and "2 Waits" in stats, stats
            page.screenshot(path=tmp_path / "page.png")
            assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")
        finally:
            browser.close()


def test_lm_evaluation_harness_runs_a_task_with_budget_forcing_through_the_server(tok, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval", reason="needs lm-evaluation-harness (pip install lm_eval)")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # s1's own evaluation sent the prompt with <|im_start|>think at its end and forced through the server
    think = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<|im_start|>think"
    docs = [dict(question="one", answer="aWaitb<|im_start|>answer 1"),
            dict(question="two", answer="cWaitd<|im_start|>answer 2")]
    cases = [(think.format(q=d["question"]), ids(d["answer"][0]) + [IM_END] + [0] * 3 + ids(d["answer"][5])
              + [IM_START] + [0] * 6 + ids(d["answer"][-2:]) + ids("\n\nmore") + [IM_END]) for d in docs]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "task.yaml").write_text(
        "task: s1_serve_smoke\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\ntest_split: test\n"
        "output_type: generate_until\n"
        f"doc_to_text: {json.dumps(think.replace('{q}', '{{question}}'))}\ndoc_to_target: answer\n"
        "generation_kwargs:\n  until: [\"\\n\\n\"]\n  max_gen_toks: 40\nmetric_list:\n  - metric: exact_match\n")
    _, app = scripted(tok, cases)
    with running(app) as url:
        results = lm_eval.simple_evaluate(
            model="local-completions", tasks=["s1_serve_smoke"], task_manager=TaskManager(include_path=str(tmp_path)),
            model_args=f"base_url={url}/v1/completions,model=scripted,tokenizer_backend=None,tokenized_requests=False",
            gen_kwargs="wait=1")
    assert results["results"]["s1_serve_smoke"]["exact_match,none"] == 1.0
