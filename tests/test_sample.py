"""
sample.py against independent references: hand-worked scripts for budget forcing (../shared/S1_NOTES.md),
transformers' logits warpers for the sampling maths; the decoder's greedy tokens against transformers'
generate are tests/test_engine.py's.

The budget-forcing tests drive the real generate() and Sampler, on engine.py's pages, with a scripted
model whose next token is known in advance, and a byte-level tokenizer built here (token id = byte value
for ASCII), so every forced string can be checked character by character.
"""

import io
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, make_tiny_checkpoint

import sample
from model import Qwen2

# -----------------------------------------------------------------------------
# A byte-level tokenizer with Qwen's special tokens and chat template

IM_END, IM_START, EOT = 256, 257, 258  # after the 256 byte tokens
CHAT_TEMPLATE = (  # Qwen's, shortened: a default system prompt when the conversation has none
    "{%- if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}"
    "{%- endif %}{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")


def bytes_to_unicode():
    """GPT-2's printable stand-ins for the 256 bytes, as the ByteLevel pre-tokenizer uses them."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}  # id = byte value
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(["<|im_end|>", "<|im_start|>", "<|endoftext|>"])
    tk = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tk.chat_template = CHAT_TEMPLATE
    assert tk.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>", "<|endoftext|>"]) == [IM_END, IM_START, EOT]
    assert tk.encode("Wait", add_special_tokens=False) == [ord(c) for c in "Wait"]
    return tk


def ids(s):
    return [ord(c) for c in s]


# -----------------------------------------------------------------------------
# A scripted model: after n generated tokens its favourite is script[n]


class ScriptedLM(torch.nn.Module):
    """
    Plays back, for each prompt, the token it "wants" at each generated step, whatever was forced in
    between. It recognises its row from the tokens the attention mask lets it see, read back from
    engine.py's pages (its one layer's keys are the token ids themselves), so a wrong mask, page or row
    fails loudly. Its very favourite is always the last embedding row, a padding row beyond the
    tokenizer, which the sampler must never pick; runner-up is 'x'.
    """

    def __init__(self, prompts, scripts, vocab_size=300, context=512, filler="z"):
        super().__init__()
        self.prompts, self.scripts, self.filler = prompts, scripts, ord(filler)
        self.config = SimpleNamespace(vocab_size=vocab_size, max_position_embeddings=context, tie_word_embeddings=True,
                                      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=1)
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the model a device and a dtype
        self.model = SimpleNamespace(layers=[SimpleNamespace(self_attn=SimpleNamespace(kv_cache=None))])
        self.seen_batch_sizes = []

    def forward(self, idx, input_pos=None, position_ids=None, mask=None, last_only=False):
        pages = self.model.layers[0].self_attn.kv_cache  # engine.py's PagedAttention
        write, read = input_pos
        ids = idx.float()[:, None, :, None]  # (B, 1, T, 1): each token's key is its id
        pages.store(write, ids, ids)
        keys, _ = pages.gather(read)  # (B, 1, S, 1)
        B = idx.size(0)
        self.seen_batch_sizes.append(B)
        logits = torch.zeros(B, 1, self.config.vocab_size)
        logits[:, 0, -1] = 100.0  # a padding row
        logits[:, 0, ord("x")] = 5.0
        for b in range(B):
            seen = keys[b, 0, :, 0][mask[b, 0, -1]].long().tolist()  # what the last query attends to
            [(p, script)] = [(p, s) for p, s in zip(self.prompts, self.scripts) if seen[: len(p)] == p]
            n = len(seen) - len(p)
            logits[b, 0, script[n] if n < len(script) else self.filler] = 10.0
        return logits


def run(tok, questions, scripts, **kw):
    prompts = [tok.encode(sample.build_prompt(tok, q, kw.get("raw", False)), add_special_tokens=False)
               for q in questions]
    model = ScriptedLM(prompts, scripts, context=kw.pop("context", 512))
    events = []
    gens = sample.generate(model, tok, questions, on_token=lambda *e: events.append(e), **kw)
    return gens, events, model


def test_finished_rows_stop_costing_compute(tok):
    # row 0 stops after two answer tokens, row 1 runs on: the model must then see a batch of one
    gens, _, model = run(tok, ["q0", "q1"], [ids("a") + [IM_END], ids("bcdefgh")], raw=True, max_new_tokens=6)
    assert [g.finish_reason for g in gens] == ["stop", "length"]
    assert model.seen_batch_sizes[:3] == [2, 2, 1] and set(model.seen_batch_sizes[2:]) == {1}


# -----------------------------------------------------------------------------
# Budget forcing, driven by a scripted model


def test_waits_min_one_token_and_natural_end(tok):
    script = (ids("a") + [IM_START]  # 'a', then thinking would end: Wait #1 (4 tokens) instead
              + [0, 0, 0] + [IM_END]  # (steps taken by W,a,i,t) then it wants to end at once: not allowed -> 'x'
              + [IM_END]  # ends again: Wait #2
              + [0, 0, 0] + ids("b") + [IM_START]  # 'b', ends again: no Waits left, natural end
              + [0] * 6 + ids(" 42") + [IM_END] + ids("never"))  # (the answer delimiter) then the answer
    [g], events, _ = run(tok, ["How many r in raspberry?"], [script], wait=2)
    assert g.thinking == "aWaitxWaitb"
    assert g.text == "aWaitxWaitb<|im_start|>answer 42"
    assert g.answer == " 42"
    assert (g.waits, g.thinking_tokens, g.forced_answer, g.finish_reason) == (2, 11, False, "stop")
    assert g.token_ids[-1] == IM_END and g.token_ids.count(IM_END) == 1  # stop token kept in ids, not in text
    forced = "".join(tok.decode([t]) for t, f in zip(g.token_ids, g.forced) if f)
    assert forced == "WaitWait<|im_start|>answer"
    assert [(t, f) for _, t, f, _ in events] == list(zip(g.token_ids, g.forced))
    assert [p for *_, p in events] == ["thinking"] * 11 + ["answer"] * 11


def test_no_wait_means_the_first_delimiter_ends_thinking(tok):
    [g], _, _ = run(tok, ["q"], [ids("ab") + [IM_END] + [0] * 6 + ids("7") + [IM_END]], wait=0)
    assert g.text == "ab<|im_start|>answer7" and g.waits == 0 and g.thinking_tokens == 2


@pytest.mark.parametrize("thinking, forced_text", [("abcdefghij", "\n<|im_start|>answer\nFinal Answer:"),
                                                   ("abcd\nfghij", "<|im_start|>answer\nFinal Answer:")])
def test_budget_cap_forces_the_final_answer(tok, thinking, forced_text):
    budget = 5
    n_forced = len(tok.encode(forced_text, add_special_tokens=False))
    # the model would think on; what it wants while the answer is forced is ignored (0s)
    script = ids(thinking) + [0] * (budget + n_forced - len(thinking)) + ids(" 9") + [IM_END]
    [g], _, _ = run(tok, ["q"], [script], max_thinking_tokens=budget)
    assert g.thinking_tokens == budget and g.forced_answer and g.finish_reason == "stop"
    assert g.text == thinking[:budget] + forced_text + " 9"
    assert g.forced == [False] * budget + [True] * n_forced + [False] * 3


def test_budget_counts_injected_wait_tokens(tok):
    script = ids("a") + [IM_END] + [0] * 3 + ids("bcdef")
    [g], _, _ = run(tok, ["q"], [script], wait=3, max_thinking_tokens=6, max_new_tokens=40)
    assert g.thinking == "aWaitb\n" and g.thinking_tokens == 6 and g.waits == 1 and g.forced_answer


def test_budget_reached_inside_a_wait_cuts_it(tok):
    [g], _, _ = run(tok, ["q"], [ids("a") + [IM_END]], wait=1, max_thinking_tokens=3, max_new_tokens=30)
    assert g.text.startswith("aWa\n<|im_start|>answer\nFinal Answer:") and g.thinking_tokens == 3


def test_auto_budget_reserves_room_for_the_answer(tok):
    context = 300
    [g], _, model = run(tok, ["q"], [[]], max_thinking_tokens="auto", context=context)  # thinks 'z' forever
    prompt_len = len(model.prompts[0])
    assert g.thinking_tokens == context - prompt_len - sample.ANSWER_RESERVE and g.forced_answer
    assert len(g.token_ids) == context - prompt_len and g.finish_reason == "length"


def test_max_new_tokens_counts_every_token(tok):
    [g], _, _ = run(tok, ["q"], [[IM_START] + [0] * 6 + ids("12345")], max_new_tokens=10)
    assert g.text == "<|im_start|>answer123" and g.finish_reason == "length" and len(g.token_ids) == 10


def test_each_row_of_a_batch_keeps_its_own_state(tok):
    questions = ["first", "second question", "third, the longest question"]
    scripts = [
        # ends, gets its Wait, ends again: natural end, a short answer, done after 15 tokens
        ids("a") + [IM_END] + [0] * 3 + ids("b") + [IM_END] + [0] * 6 + ids("1") + [IM_END],
        # ends once (a Wait), then thinks into the budget, answers, done after 33 tokens
        ids("c") + [IM_START] + [0] * 3 + ids("defghijk") + [0] * 17 + ids("22") + [IM_END],
        # never ends thinking, never ends the answer: budget, then the length limit
        ids("efghijklmnop"),
    ]
    kw = dict(wait=1, max_thinking_tokens=8, max_new_tokens=40)
    gens, events, model = run(tok, questions, scripts, **kw)
    summary = [(g.thinking, g.waits, g.thinking_tokens, g.forced_answer, g.finish_reason) for g in gens]
    assert summary == [("aWaitb", 1, 6, False, "stop"),
                       ("cWaitdef\n", 1, 8, True, "stop"),
                       ("efghijkl\n", 0, 8, True, "length")]
    assert [len(g.token_ids) for g in gens] == [15, 33, 40] and [g.answer for g in gens][:2] == ["1", "\nFinal Answer:22"]
    # the same rows one at a time give the same generations: no state leaks between rows
    for q, s, g in zip(questions, scripts, gens):
        [alone], _, _ = run(tok, [q], [s], **kw)
        assert alone == g
    for r, g in enumerate(gens):
        assert [(t, f) for row, t, f, _ in events if row == r] == list(zip(g.token_ids, g.forced))


def test_rows_ending_at_different_steps(tok):
    questions = ["a", "bb", "ccc"]
    scripts = [[IM_END] + [0] * 6 + [IM_END],  # done after 8 tokens
               ids("xy") + [IM_END] + [0] * 6 + ids("ok") + [IM_END],  # done after 12
               ids("long thinking") + [IM_END] + [0] * 6 + ids("fine") + [IM_END]]  # done after 25
    gens, _, model = run(tok, questions, scripts)
    assert [len(g.token_ids) for g in gens] == [8, 12, 25]
    assert [g.answer for g in gens] == ["", "ok", "fine"] and {g.finish_reason for g in gens} == {"stop"}
    assert model.seen_batch_sizes[0] == 3 and model.seen_batch_sizes[-1] == 1


def test_raw_prompts(tok):
    # plain text: no thinking phase, the delimiter is just text, im_end stops
    [g], _, _ = run(tok, ["Once upon"], [ids(" a") + [IM_START] + ids("b") + [IM_END]], raw=True, wait=2)
    assert g.text == " a<|im_start|>b" and g.thinking == "" and g.answer == g.text and g.waits == 0
    # a raw prompt that ends inside a think block gets budget forcing as usual
    prompt = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<|im_start|>think"
    [g], _, _ = run(tok, [prompt], [ids("a") + [IM_END] + [0] * 3 + ids("b") + [IM_END]], raw=True, wait=1,
                    max_new_tokens=20)
    assert g.thinking == "aWaitb" and g.waits == 1


def test_a_tokenizer_that_cannot_spell_the_forced_strings_is_refused(tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    t.add_special_tokens(["<|im_end|>", "<|im_start|>"])
    tk = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", eos_token="<|im_end|>")
    with pytest.raises(sample.InputError, match="cannot write 'Wait'"):
        sample.make_forcing(tk, wait=1)


def test_prompt_format(tok):
    p = sample.build_prompt(tok, "What is 2+2?")
    assert p == ("<|im_start|>system\nYou are a tiny test model.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                 "<|im_start|>assistant\n<|im_start|>think")
    assert sample.build_prompt(tok, "What is 2+2?", raw=True) == "What is 2+2?"


def test_qwen_token_ids_of_the_forced_strings(qwen_tokenizer):
    f = sample.make_forcing(qwen_tokenizer, wait=1)
    assert f.wait_ids == [14190] and f.answer_ids == [151644, 9217]
    assert f.final_nl_ids == [198, 151644, 9217, 198, 19357, 21806, 25]
    assert {151644, 151645} <= f.think_end and 151644 not in f.stop and 151645 in f.stop
    p = sample.build_prompt(qwen_tokenizer, "How many r in raspberry?")
    assert "You are Qwen, created by Alibaba Cloud." in p
    assert qwen_tokenizer.encode(p, add_special_tokens=False)[-2:] == [151644, 26865]


# -----------------------------------------------------------------------------
# Continuous batching: a sweep in one call, rows joining, preempted, finishing, cancelled


SWEEP = [  # (question, script, its own settings): mixed budgets, Wait counts and lengths in one batch
    ("first", ids("a") + [IM_END] + [0] * 3 + ids("b") + [IM_END] + [0] * 6 + ids("1") + [IM_END], dict(wait=1)),
    ("second question", ids("c") + [IM_START] + [0] * 3 + ids("defghijk") + [0] * 17 + ids("22") + [IM_END],
     dict(wait=1, max_thinking_tokens=8)),
    ("third, the longest question", ids("efghijklmnop"), dict(max_thinking_tokens=8, max_new_tokens=40)),
    ("fourth", ids("ab") + [IM_END] + [0] * 6 + ids("7") + [IM_END], dict(wait=0)),
    ("fifth", ids("a") + [IM_END] + [0] * 3 + ids("bc") + [IM_END] + [0] * 3 + ids("d") + [IM_END] + [0] * 6
     + ids("5") + [IM_END], dict(wait=2, max_thinking_tokens=30)),
]


def sweep_alone(tok):
    """Each row of SWEEP generated on its own: what it must give whatever else is in the batch."""
    return [run(tok, [q], [script], **kw)[0][0] for q, script, kw in SWEEP]


def test_a_sweep_in_one_batch_with_rows_joining_and_preempted(tok):
    # 2 rows at a time and a pool of 12 pages of 16 tokens, for prompts of 66-88 tokens that grow to 78-128:
    # rows join as others finish, and are preempted and prefilled again with every token they had.
    alone = sweep_alone(tok)
    prompts = [tok.encode(sample.build_prompt(tok, q), add_special_tokens=False) for q, _, _ in SWEEP]
    model = ScriptedLM(prompts, [script for _, script, _ in SWEEP])
    events, finished = [], []
    with sample.Sampler(model, tok, batch_size=2, kv_cache_gb=12 * 16 * 8 / 1e9, page_size=16) as sampler:
        ids_ = sample.submit_all(sampler, [dict(kw, prompt=q) for q, _, kw in SWEEP], dict(max_new_tokens=40))
        gens = sample.run_all(sampler, ids_, on_token=lambda *e: events.append(e),
                              on_finish=lambda i, g: finished.append((i, g, len(events))))
        assert sampler.engine.preemptions > 0 and max(model.seen_batch_sizes) == 2
    assert gens == alone
    for i, g in enumerate(gens):  # every token once, in order: nothing re-emitted or lost after a preemption
        assert [(t, f) for row, t, f, _ in events if row == i] == list(zip(g.token_ids, g.forced))
    # on_finish: each prompt once, with its generation, right after its last token, in the order they end
    assert sorted(i for i, _, _ in finished) == list(range(len(SWEEP)))
    for i, g, n in finished:
        assert g is gens[i] and events[n - 1][0] == i and all(e[0] != i for e in events[n:])
    ends = [max(n for n, e in enumerate(events) if e[0] == i) for i in range(len(SWEEP))]
    assert [i for i, _, _ in finished] == sorted(range(len(SWEEP)), key=ends.__getitem__)


def test_sampler_takes_requests_between_steps_and_cancels(tok):
    alone = sweep_alone(tok)
    prompts = [tok.encode(sample.build_prompt(tok, q), add_special_tokens=False) for q, _, _ in SWEEP]
    model = ScriptedLM(prompts, [script for _, script, _ in SWEEP])
    sampler = sample.Sampler(model, tok, batch_size=4, max_len=200)
    first = sampler.submit(SWEEP[0][0], **{"max_new_tokens": 40, **SWEEP[0][2]})
    doomed = sampler.submit(SWEEP[2][0], **SWEEP[2][2])
    events = sampler.step() + sampler.step() + sampler.step()  # the prefill gives the first token
    late = sampler.submit(SWEEP[1][0], **{"max_new_tokens": 40, **SWEEP[1][2]})  # joins the running batch
    sampler.cancel(doomed)  # a client gone: its row and pages are free at once
    assert len(sampler.engine.running) + len(sampler.engine.waiting) == 2
    while sampler.busy:
        events += sampler.step()
    assert len(sampler.engine.free) == sampler.engine.n_pages  # every page back
    done = {e.id: e.generation for e in events if e.generation is not None}
    assert done == {first: alone[0], late: alone[1]}
    assert [e.token for e in events if e.id == doomed] == alone[2].token_ids[:3]  # then nothing more
    with pytest.raises(sample.InputError, match="max_len=200"):
        sampler.submit("q", max_new_tokens=300)
    sampler.close()


def test_per_prompt_settings_are_checked(tok):
    model = ScriptedLM([], [])
    with pytest.raises(sample.InputError, match="prompt 2: unknown field 'max_thinking'"):
        sample.generate(model, tok, ["q", {"prompt": "r", "max_thinking": 5}])
    with pytest.raises(sample.InputError, match="prompt 1: wait must be 0 or more"):
        sample.generate(model, tok, [{"prompt": "r", "wait": True}])


def test_each_row_samples_with_its_own_seed_whatever_the_batch(cli_model, tok):
    model = Qwen2.from_pretrained(cli_model)
    kw = dict(temperature=1.0, max_new_tokens=12)
    gens = sample.generate(model, tok, ["a", "bb", "ccc"], seed=5, **kw)  # seeds 5, 6, 7
    assert sample.generate(model, tok, [{"prompt": "bb", "seed": 6}], **kw) == [gens[1]]
    again = sample.generate(model, tok, ["zz", {"prompt": "ccc", "seed": 7}, "a"], seed=50, batch_size=2, **kw)
    assert again[1] == gens[2]
    assert sample.generate(model, tok, ["a"], seed=6, **kw)[0].token_ids != gens[0].token_ids


# -----------------------------------------------------------------------------
# Sampling maths


def test_greedy_and_padding_rows_are_never_sampled():
    logits = torch.tensor([[0.0, 3.0, 1.0, 9.0], [2.0, 1.0, 0.0, 9.0]])  # id 3 is a padding row
    assert sample.sample(logits, vocab_limit=3).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    drawn = sample.sample(logits.repeat(500, 1), temperature=5.0, vocab_limit=3, generator=g)
    assert drawn.max() < 3 and len(set(drawn.tolist())) == 3


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, 1.0), (0.5, None, 1.0), (2.0, None, 1.0),
                                                       (1.0, 2, 1.0), (1.0, None, 0.7), (0.7, 3, 0.9),
                                                       (1.0, None, 0.5)])
def test_sampling_distribution_matches_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).clamp(min=1e-9).log()
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    expected = expected.softmax(-1)[0]
    n = 40000
    drawn = sample.sample(logits.expand(n, -1), temperature, top_k, top_p, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=5).float() / n
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
    assert (freq[expected == 0] == 0).all()


# -----------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, tok):
    path, _ = make_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "model", vocab_size=272)  # 13 padding rows
    tok.save_pretrained(path)
    return path


def cli(*args, stdin=""):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, timeout=120)


def test_cli_streams_one_prompt_and_writes_json_for_several(cli_model):
    r = cli("--model", cli_model, "--wait", "1", "--max-thinking-tokens", "12", "--max-new-tokens", "40", "Hi")
    assert r.returncode == 0, r.stderr
    assert "<|im_start|>user\nHi<|im_end|>" in r.stdout and "--- thinking ---" in r.stdout
    assert "--- answer ---" in r.stdout and "[[\n<|im_start|>answer\nFinal Answer:]]" in r.stdout
    assert "tokens/s" in r.stderr and "bandwidth achieved" in r.stderr
    r = cli("--model", cli_model, "--json", "--max-new-tokens", "8", "--file", "-",
            stdin='one\n{"question": "two"}\n\n')
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and rows[1]["prompt"].endswith("two<|im_end|>\n<|im_start|>assistant\n<|im_start|>think")
    assert {"prompt", "text", "thinking", "answer", "token_ids", "thinking_tokens", "waits", "forced_answer",
            "finish_reason"} <= set(rows[0])
    assert all(max(r["token_ids"]) < 259 for r in rows)  # never a padding row


def one_line_error(capsys, monkeypatch, *argv):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as e:
        sample.main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, fragment", [
    (["--wait", "-1", "q"], "wait must be 0 or more"),
    (["--max-thinking-tokens", "0", "q"], "max thinking tokens must be a positive integer"),
    (["--max-thinking-tokens", "lots", "q"], "not an integer or 'auto'"),
    (["--top-p", "0", "q"], "top-p must be in (0, 1]"),
    (["--top-p", "1.5", "q"], "top-p must be in (0, 1]"),
    (["--model", "/no/such/dir", "q"], "no such directory"),
    (["--file", "/no/such/file.txt"], "no such file"),
])
def test_cli_bad_settings(capsys, monkeypatch, argv, fragment):
    assert fragment in one_line_error(capsys, monkeypatch, *argv)


def test_cli_default_model_missing_says_what_to_run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, monkeypatch, "q")
    assert "no model at out/tiny" in err and "train.py" in err


@pytest.mark.parametrize("prompt, fragment", [("", "prompt 1: the prompt is empty"), ("x" * 600, "context is 512")])
def test_cli_bad_prompts(capsys, monkeypatch, cli_model, prompt, fragment):
    assert fragment in one_line_error(capsys, monkeypatch, "--model", cli_model, prompt)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_unavailable_device(capsys, monkeypatch, cli_model):
    assert "device cuda is not available" in one_line_error(capsys, monkeypatch, "--model", cli_model, "--device",
                                                            "cuda", "q")


def test_cli_bad_input_in_a_subprocess_has_no_traceback(cli_model):
    r = cli("--model", cli_model, "--wait", "-2", "q")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_jsonl_rows_carry_their_own_settings(capsys, cli_model, tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "one"}\n{"question": "two", "max_thinking_tokens": 2, "max_new_tokens": 3, "id": 7}\n')
    sample.main(["--model", cli_model, "--json", "--max-new-tokens", "8", "--batch-size", "1", "--file", str(f)])
    one, two = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # in the file's order
    assert one["prompt"].endswith("one<|im_end|>\n<|im_start|>assistant\n<|im_start|>think")
    assert len(one["token_ids"]) == 8 or one["finish_reason"] == "stop"
    assert (two["thinking_tokens"], two["forced_answer"], len(two["token_ids"])) == (2, True, 3)


@pytest.mark.parametrize("lines, fragment", [
    ('{"question": "q", "wait": "two"}', "line 1: field 'wait': wait must be 0 or more"),
    ('{"question": "q"}\n{"question": "r", "max_new_tokens": 0}', "line 2: field 'max_new_tokens': max_new_tokens"),
    ('{"question": "q", "max_thinking_tokens": "lots"}', "line 1: field 'max_thinking_tokens': max thinking tokens"),
])
def test_cli_bad_jsonl_fields(capsys, monkeypatch, tmp_path, lines, fragment):
    f = tmp_path / "q.jsonl"
    f.write_text(lines + "\n")
    assert f"{f} {fragment}" in one_line_error(capsys, monkeypatch, "--file", str(f))


def test_cli_kv_cache_too_small_names_the_smallest_that_works(capsys, monkeypatch, cli_model):
    args = ["--model", cli_model, "--max-new-tokens", "8", "--json", "q"]
    err = one_line_error(capsys, monkeypatch, *args, "--kv-cache-gb", "0.000001")
    smallest = err.split("the smallest that works is --kv-cache-gb ")[1].strip()
    sample.main(args + ["--kv-cache-gb", smallest])
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) <= 8
