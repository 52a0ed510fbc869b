"""
sample.py against independent references: transformers' greedy generate for the decoder, its logits
warpers for the sampling maths, and hand-worked scripts for budget forcing (../shared/S1_NOTES.md).

The budget-forcing tests drive the real generate() with a scripted model whose next token is known in
advance, and a byte-level tokenizer built here (token id = byte value for ASCII), so every forced
string can be checked character by character.
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
    between. It recognises its row from the tokens the attention mask lets it see, so a wrong mask or a
    wrong row after the batch shrinks fails loudly. Its very favourite is always the last embedding
    row, a padding row beyond the tokenizer, which the sampler must never pick; runner-up is 'x'.
    """

    def __init__(self, prompts, scripts, vocab_size=300, context=512, filler="z"):
        super().__init__()
        self.prompts, self.scripts, self.filler = prompts, scripts, ord(filler)
        self.config = SimpleNamespace(vocab_size=vocab_size, max_position_embeddings=context, tie_word_embeddings=True)
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.model = SimpleNamespace(layers=[SimpleNamespace(self_attn=SimpleNamespace(kv_cache=None))])
        self.seen_batch_sizes = []

    def setup_cache(self, B, S):
        self.model.layers[0].self_attn.kv_cache = SimpleNamespace(k=torch.full((B, S), -1), v=torch.zeros(B, S))

    def clear_cache(self):
        self.model.layers[0].self_attn.kv_cache = None

    def forward(self, idx, input_pos=None, position_ids=None, mask=None, last_only=False):
        cache = self.model.layers[0].self_attn.kv_cache
        cache.k[:, input_pos] = idx
        B = idx.size(0)
        self.seen_batch_sizes.append(B)
        logits = torch.zeros(B, 1, self.config.vocab_size)
        logits[:, 0, -1] = 100.0  # a padding row
        logits[:, 0, ord("x")] = 5.0
        for b in range(B):
            seen = cache.k[b, : mask.size(-1)][mask[b, 0, -1]].tolist()  # what the last query attends to
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


# -----------------------------------------------------------------------------
# Greedy decoding: identical tokens to transformers' generate


def reference_generate(ref, prompts, n, eos=None):
    """transformers' greedy generate on left-padded prompts; each row cut after its eos."""
    P = max(len(p) for p in prompts)
    x = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    out = ref.generate(x, attention_mask=attention_mask, max_new_tokens=n, do_sample=False, pad_token_id=0,
                       eos_token_id=eos)[:, P:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def our_generate(model, prompts, n, eos=None):
    rows = [sample.Row(max_new=n) for _ in prompts]
    forcing = sample.Forcing(stop={eos} if eos is not None else set())
    list(sample.decode(model, prompts, rows, forcing))
    return [r.tokens for r in rows]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A random model whose next token depends on the whole context (conftest's tiny norms near 0 make
    attention almost uniform, so a wrong position or mask would go unnoticed in greedy tokens)."""
    path, ref = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=1)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.1)
    ref.save_pretrained(path)
    return Qwen2.from_pretrained(path), ref


@pytest.mark.parametrize("prompt", [[7], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]])
def test_greedy_single_prompt_matches_transformers(tiny_pair, prompt):
    model, ref = tiny_pair
    assert our_generate(model, [prompt], 24) == reference_generate(ref, [prompt], 24)


def test_greedy_batch_of_mixed_lengths_matches_transformers(tiny_pair):
    model, ref = tiny_pair
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 2, 50, 60], [9]]
    expected = reference_generate(ref, prompts, 16)
    assert our_generate(model, prompts, 16) == expected
    # Each row alone gives the same tokens as in the batch: the padding is invisible.
    assert [our_generate(model, [p], 16)[0] for p in prompts] == expected


def test_rows_that_stop_early_leave_the_batch_and_the_rest_stay_right(tiny_pair):
    model, ref = tiny_pair
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 2, 50, 60], [9]]
    free = reference_generate(ref, prompts, 16)
    eos = free[1][2]  # a token row 1 emits early; other rows emit it later or never
    expected = reference_generate(ref, prompts, 16, eos=eos)
    assert len({len(r) for r in expected}) > 1, "rows should stop at different steps for this test to mean anything"
    assert our_generate(model, prompts, 16, eos=eos) == expected


def test_compiled_decode_step_traces_whole_and_matches_transformers(tiny_pair, aot_eager, fresh_compile):
    # --compile attends over the whole preallocated cache with a mask (static shapes, for CUDA graphs) and
    # compiles the step with fullgraph=True, so a graph break fails here. aot_eager functionalises the
    # in-place cache writes as a GPU compile would. Rows leave as they finish, so the batch shrinks.
    model, ref = tiny_pair
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 2, 50, 60], [9]]
    eos = reference_generate(ref, prompts, 16)[1][2]
    expected = reference_generate(ref, prompts, 16, eos=eos)
    batch_sizes = {sum(len(r) > j for r in expected) for j in range(1, 16)} - {0}  # of the steps after prefill
    assert len(batch_sizes) > 1

    for run in range(2):
        rows = [sample.Row(max_new=16) for _ in prompts]
        list(sample.decode(model, prompts, rows, sample.Forcing(stop={eos}), compile=True))
        assert [r.tokens for r in rows] == expected
        if run == 0:
            graphs = fresh_compile()
            # at most one graph per batch size: nothing that changes every step (the position) is baked in
            assert 1 <= graphs <= len(batch_sizes), graphs
    assert fresh_compile() == graphs  # the same shapes again: nothing recompiled


@pytest.mark.skipif(not any(map(shutil.which, ("g++", "clang++"))), reason="inductor on CPU needs a C++ compiler")
def test_compiled_decode_step_with_inductor_matches_transformers(tiny_pair, fresh_compile):
    # The real compile, kernels and all (C++ on a CPU; about 15 s here for the tiny model).
    model, ref = tiny_pair
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4]]
    rows = [sample.Row(max_new=12) for _ in prompts]
    list(sample.decode(model, prompts, rows, compile=True))
    assert [r.tokens for r in rows] == reference_generate(ref, prompts, 12)
    assert fresh_compile() == 1


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


def test_seed_makes_sampling_reproducible(tiny_pair):
    model, _ = tiny_pair

    def draw(seed):
        rows = [sample.Row(max_new=12)]
        gen = torch.Generator().manual_seed(seed)
        list(sample.decode(model, [[1, 2, 3]], rows, temperature=1.5, generator=gen))
        return rows[0].tokens

    assert draw(1) == draw(1) and draw(1) != draw(2)


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


@pytest.mark.parametrize("prompt, fragment", [("", "prompt 1 is empty"), ("x" * 600, "context is 512")])
def test_cli_bad_prompts(capsys, monkeypatch, cli_model, prompt, fragment):
    assert fragment in one_line_error(capsys, monkeypatch, "--model", cli_model, prompt)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_unavailable_device(capsys, monkeypatch, cli_model):
    assert "device cuda is not available" in one_line_error(capsys, monkeypatch, "--model", cli_model, "--device",
                                                            "cuda", "q")


def test_cli_bad_input_in_a_subprocess_has_no_traceback(cli_model):
    r = cli("--model", cli_model, "--wait", "-2", "q")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
