"""
engine.py against transformers: greedy tokens of every sequence equal transformers' generate for that
prompt alone, whatever else is in the batch (sequences joining mid-way, finishing, preempted for want of
pages, prefilled in chunks), eagerly and through the compiled FlexAttention decode step; and the pages
themselves: taken as sequences grow, all given back when they end, a pool too small refused.
"""

import shutil

import pytest
import torch
from conftest import make_tiny_checkpoint

from engine import CacheTooSmall, Engine, kv_bytes_per_token
from model import Qwen2

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 2, 50, 60], [9], list(range(20, 33)), [70, 71, 72]]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A random model whose next token depends on the whole context (conftest's tiny norms near 0 make
    attention almost uniform, so a wrong position, page or mask would go unnoticed in greedy tokens)."""
    path, ref = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=1)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.1)
    ref.save_pretrained(path)
    return Qwen2.from_pretrained(path), ref


def reference(ref, prompt, n, eos=None):
    """transformers' greedy generate for one prompt alone, cut after eos."""
    out = ref.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0,
                       eos_token_id=eos)[0, len(prompt):].tolist()
    return out[: out.index(eos) + 1] if eos in out else out


def greedy(model, prompts, n, eos=None, **engine_args):
    """Our engine, greedy: every prompt added at once, each finished after n tokens or at eos. Returns the
    tokens and the engine (closed), whose counters tell what happened."""
    engine = Engine(model, max_len=max(map(len, prompts)) + n, **engine_args)
    for i, p in enumerate(prompts):
        engine.add(i, p)
    out = [[] for _ in prompts]
    while len(engine):
        ids, logits = engine.step()
        for i, token in zip(ids, logits.argmax(-1).tolist()):
            out[i].append(token)
            if len(out[i]) == n or token == eos:
                engine.finish(i)
            else:
                engine.append(i, token)
        assert engine.n_pages - len(engine.free) == sum(len(s.pages) for s in engine.running)  # no page lost
    assert len(engine.free) == engine.n_pages  # every page back
    engine.close()
    return out, engine


@pytest.fixture(scope="module")
def expected(tiny_pair):
    _, ref = tiny_pair
    return [reference(ref, p, 16) for p in PROMPTS]


def test_a_batch_of_mixed_lengths_matches_transformers(tiny_pair, expected):
    out, engine = greedy(tiny_pair[0], PROMPTS, 16)
    assert out == expected
    assert engine.preemptions == 0 and engine.steps == 16  # one prefill step, then 15 decode steps


def test_rows_that_stop_early_leave_and_waiting_rows_join(tiny_pair, expected):
    model, ref = tiny_pair
    eos = expected[1][2]  # a token row 1 emits early; other rows emit it later or never
    want = [reference(ref, p, 16, eos) for p in PROMPTS]
    assert len({len(r) for r in want}) > 1, "rows should stop at different steps for this test to mean anything"
    out, engine = greedy(model, PROMPTS, 16, eos, batch_size=2)  # four prompts wait, then join one by one
    assert out == want
    assert engine.peak_pages <= 2 * 1  # two rows of at most 29 tokens: one 64-slot page each


def test_preemption_by_a_pool_of_a_few_pages_loses_nothing(tiny_pair, expected):
    # 4-slot pages, 9 of them, 4 rows of up to 29 tokens (8 pages each): rows are preempted over and over,
    # and each is prefilled again with its prompt and the tokens it had, then goes on where it was.
    kv_gb = 9 * 4 * kv_bytes_per_token(tiny_pair[0]) / 1e9
    out, engine = greedy(tiny_pair[0], PROMPTS, 16, batch_size=4, page_size=4, kv_cache_gb=kv_gb)
    assert out == expected
    assert engine.n_pages == 9 and engine.preemptions > 0


def test_prefill_in_chunks(tiny_pair, expected, monkeypatch):
    # at most 4 padded tokens a step: the 13-token prompt goes in over 4 steps, the others one or two at a time
    shapes, forward = [], Engine.forward
    monkeypatch.setattr(Engine, "forward", lambda self, batch: shapes.append(
        (len(batch), max(n for _, n in batch))) or forward(self, batch))
    out, _ = greedy(tiny_pair[0], PROMPTS, 16, step_tokens=4, page_size=4)
    assert out == expected
    prefill = [(B, T) for B, T in shapes if T > 1]
    assert max(B * T for B, T in prefill) <= 4 and sum(B * T for B, T in prefill) >= sum(map(len, PROMPTS)) - 6


def test_a_pool_too_small_for_one_sequence_names_the_smallest_that_works(tiny_pair):
    model = tiny_pair[0]
    with pytest.raises(CacheTooSmall, match=r"the smallest that works is --kv-cache-gb ([0-9.]+)") as e:
        Engine(model, max_len=100, kv_cache_gb=1e-6, page_size=4)
    smallest = float(e.value.args[0].rsplit(" ", 1)[-1])
    engine = Engine(model, max_len=100, kv_cache_gb=smallest, page_size=4)
    assert engine.n_pages * 4 >= 100
    engine.close()


def test_compiled_decode_matches_transformers_one_graph_per_batch_bucket(tiny_pair, expected, aot_eager,
                                                                        fresh_compile):
    # The compiled step runs FlexAttention over the pool with a paged block mask, with fullgraph=True (a
    # graph break fails here); aot_eager functionalises the in-place page writes as a GPU compile would.
    # Rows finish, join and are preempted, so the batch goes through the buckets 4, 2 and 1.
    kv_gb = 12 * 4 * kv_bytes_per_token(tiny_pair[0]) / 1e9
    for run in range(2):
        out, engine = greedy(tiny_pair[0], PROMPTS, 16, batch_size=4, page_size=4, kv_cache_gb=kv_gb, compile=True)
        assert out == expected
        if run == 0:
            graphs = fresh_compile()
            assert engine.preemptions > 0 and 1 <= graphs <= len(engine.buckets) == 3, graphs
    assert fresh_compile() == graphs  # the same shapes again: nothing recompiled


@pytest.mark.skipif(not any(map(shutil.which, ("g++", "clang++"))), reason="inductor on CPU needs a C++ compiler")
def test_compiled_decode_with_inductor_matches_transformers(tiny_pair, expected, fresh_compile):
    # The real compile: FlexAttention's C++ kernel reads only each row's pages (a minute or so here).
    out, _ = greedy(tiny_pair[0], PROMPTS[:2], 16, batch_size=2, page_size=16, compile=True)
    assert out == expected[:2]
    assert fresh_compile() == 1
