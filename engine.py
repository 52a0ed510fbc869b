"""
The engine under sample.py: a paged KV cache and continuous batching, after nano-vllm, in plain PyTorch.

Read it top to bottom: the attention of one layer over pages of a shared pool, a sequence and its page
table, then the Engine: the pool of pages, a scheduler that admits waiting sequences whenever a batch
row and pages are free and preempts the newest when pages run out, and the batched forward pass that
feeds every scheduled sequence its next tokens and returns the logits that come after them.

Why pages. A static cache holds `batch x (prompt + max_new_tokens)` slots from the start, so a 32K-token
budget reserves 32K slots per row whether a row writes 300 tokens or 30,000, and a batch keeps decoding
until its longest row ends. Here the keys and values of every layer live in one pool of PAGE_SIZE-token
pages; a sequence takes a page when it needs one and gives its pages back when it ends, so the memory
held follows the tokens actually in flight, and a waiting prompt joins the moment a row leaves.

The engine knows nothing of sampling or budget forcing. It is told which token each sequence takes
next (sample.py decides: sampled or forced) and hands back the logits after each sequence's last token.
A sequence preempted for want of pages loses its pages, not its tokens: readmitted, its prompt and
tokens so far are prefilled again (recomputed, as nano-vllm does), and the logits that come out are the
ones it was waiting for, so nothing is emitted twice or lost.

Attention over pages, two ways. Eagerly (prefill, and decode without --compile) each row's pages are
gathered into a (B, n_kv, S, hd) tensor and SDPA runs with an explicit mask; S is the longest row of
the step, so short rows beside a long one pay for its length. The compiled decode step (--compile)
instead runs FlexAttention straight over the pool with a block mask whose blocks are the row's pages,
so each row reads only its own pages; its shapes are static (batch padded to a power of two, page
tables padded to the longest sequence), so each batch bucket is one graph (one CUDA graph on a GPU).
FlexAttention without compile materialises the scores against the whole pool, so it is never run eagerly.

What it leaves out: prefix sharing (a sweep's common prompt is a few hundred tokens beside thousands of
generated ones; see the README), CUDA graphs for prefill, chunked prefill mixed into decode steps,
swapping preempted pages to CPU, and tensor parallelism.
"""

import os
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from model import attend

# -----------------------------------------------------------------------------
# Defaults, spelled out once

PAGE_SIZE = 64  # token slots per page: small enough that a row wastes little, large enough for FlexAttention's blocks
STEP_TOKENS = 4096  # a prefill step feeds at most this many (padded) tokens: bounds its activations
GPU_KV_SHARE = 0.8  # of the GPU memory free after the weights, when --kv-cache-gb is not given
CPU_KV_SHARE = 0.25  # of the free RAM on a CPU (or unified memory), when --kv-cache-gb is not given
Q_BLOCK = 128  # FlexAttention's query block; a decode step's queries are far fewer, so one block


class CacheTooSmall(ValueError):
    """The KV cache cannot hold even one sequence of the longest length asked for."""


# -----------------------------------------------------------------------------
# Attention over pages


class PagedAttention(nn.Module):
    """
    One layer's keys and values, views of the engine's pool: (n_kv, slots, hd), slot = page * PAGE_SIZE
    + offset. model.py's Attention hands it the step's new keys and values and gets the attention back.
    """

    def __init__(self, k, v):
        super().__init__()
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("v", v, persistent=False)

    def store(self, write, k, v):
        """write (B, T) pool slots; k, v (B, n_kv, T, hd). Padding tokens all land on the scratch slot 0."""
        n_kv, hd = k.size(1), k.size(3)
        # index_copy_ keeps the shapes static, which is what lets a compiled step be a CUDA graph.
        self.k.index_copy_(1, write.flatten(), k.transpose(0, 1).reshape(n_kv, -1, hd))
        self.v.index_copy_(1, write.flatten(), v.transpose(0, 1).reshape(n_kv, -1, hd))

    def gather(self, read):
        """read (B, S) pool slots -> each row's keys and values, (B, n_kv, S, hd) each."""
        # index_select, not self.k[:, read]: on a CPU advanced indexing is several times slower
        B, S = read.shape
        k, v = (x.index_select(1, read.flatten()).view(x.size(0), B, S, x.size(2)) for x in (self.k, self.v))
        return k.transpose(0, 1), v.transpose(0, 1)

    def forward(self, q, k, v, input_pos, mask):
        """
        q (B, nh, T, hd); k, v (B, n_kv, T, hd). input_pos = (write (B, T), read (B, S) or None): the
        pool slots of the new tokens, and of every key each row attends to. With `read`, mask is the
        (B, 1, T, S) boolean mask of SDPA; without, it is a paged BlockMask (decode only, compiled).
        """
        write, read = input_pos
        self.store(write, k, v)
        if read is not None:
            return attend(q, *self.gather(read), mask)
        # FlexAttention over the whole pool, one row per query batch. Its GPU decoding kernel wants a power
        # of two query heads per key head (Qwen2.5 has 5, 6, 7): so each key head's group of query heads
        # is laid out as that head's "query positions" (T = 1 in decode), and no GQA is left to do.
        B, nh, _, hd = q.shape
        n_kv = k.size(1)
        y = flex_attention(q.view(B, n_kv, nh // n_kv, hd), self.k[None], self.v[None], block_mask=mask)
        return y.view(B, nh, 1, hd)


def page_lists(table, length, page_size: int, pool_pages: int):
    """
    What a decode step's BlockMask is made of: row b reads the first ceil(length[b] / page_size) pages
    of its page table, every slot of each page but the last ("full" blocks: the kernels skip the mask
    there) and the slots in use of the last. table (B, W) page ids; length (B,) tokens cached once this
    step's token is in. Made before the compiled step, whose inputs they are: FlexAttention's CPU kernel
    wants the tensors its mask reads to be inputs, and its block lists as wide as the pool has pages.
    """
    B, W = table.shape
    pages = (length + page_size - 1) // page_size  # (B,)
    fill = length - (pages - 1) * page_size  # (B,) slots in use in the last page, 1..page_size
    last = table.gather(1, (pages - 1)[:, None])  # (B, 1) the page being written
    zeros = torch.zeros(B, pool_pages, dtype=torch.int32, device=table.device)  # (B, pool pages)
    in_use = torch.arange(W, device=table.device) < pages[:, None]  # (B, W)
    owned = zeros.scatter_add(1, table, in_use.int()) > 0  # (B, pool pages): the row's own pages
    full = torch.cat([table.int(), zeros[:, W:]], dim=1)  # its pages in order, the first pages - 1 of them full
    partial = torch.cat([last.int(), zeros[:, 1:]], dim=1)  # the last, where the mask applies
    return (pages - 1).int(), full, partial, owned, last[:, 0], fill


def page_block_mask(n_full, full, partial, owned, last, fill, page_size: int, queries: int) -> BlockMask:
    B, pool_pages = full.shape

    def mask_mod(b, h, q_idx, kv_idx):  # the whole truth: eager FlexAttention evaluates it on every slot
        page = kv_idx // page_size
        return owned[b, page] & ((page != last[b]) | (kv_idx % page_size < fill[b]))

    return BlockMask.from_kv_blocks(
        torch.ones_like(n_full).view(B, 1, 1), partial.view(B, 1, 1, -1), n_full.view(B, 1, 1),
        full.view(B, 1, 1, -1), BLOCK_SIZE=(Q_BLOCK, page_size), mask_mod=mask_mod,
        seq_lengths=(queries, pool_pages * page_size), compute_q_blocks=False)


def decode_step(model, idx, write, pos, lists, page_size: int, queries: int):
    """One token for each row through the pages: idx (B, 1) -> logits (B, vocab). The compiled function."""
    mask = page_block_mask(*lists, page_size, queries)
    return model(idx, input_pos=(write, None), position_ids=pos, mask=mask, last_only=True)[:, -1]


# -----------------------------------------------------------------------------
# A sequence


@dataclass(eq=False)  # compared by identity: `seq in self.running` must not compare token lists
class Sequence:
    id: object  # the caller's handle
    tokens: list  # the prompt, then every token it has taken
    pages: list = field(default_factory=list)  # its page table: the i-th page of the sequence -> a pool page
    cached: int = 0  # how many of `tokens` have their keys and values in the pages


def cdiv(a, b):
    return -(-a // b)


def gb_at_least(nbytes: int) -> float:
    """nbytes in GB, rounded up to two significant digits (and never below nbytes once read back)."""
    step = 10 ** max(len(str(nbytes)) - 2, 0)
    gb = cdiv(nbytes, step) * step / 1e9
    return gb if int(gb * 1e9) >= nbytes else gb + step / 1e9


def kv_bytes_per_token(model) -> int:
    """Every layer's K and V of one token, in the weights' dtype."""
    cfg = model.config
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * next(model.parameters()).element_size()


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one step reads: every parameter once, but only one row of an untied embedding."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied weight is listed once
    if not model.config.tie_word_embeddings:  # a tied table is read whole anyway, as the output head
        total -= model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
    return total


def free_memory(device) -> int:
    if device.type == "cuda":  # free on the device, and what torch keeps but no tensor uses (an earlier pool)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# -----------------------------------------------------------------------------
# The engine


class Engine:
    """
    Continuous batching over a paged KV cache for one model. The caller's loop:

        engine.add(id, prompt_ids)                 # any time; it waits for a batch row and pages
        ids, logits = engine.step()                # one forward pass; logits (len(ids), vocab)
        for each id: engine.append(id, token)      # the token it takes next, or
                     engine.finish(id)             # it is done (or cancelled): its pages go back

    `step` returns the sequences whose every token is now in the cache, each with the logits that come
    after its last token; each must be given its next token or finished before the next step.
    max_len: the longest sequence (prompt + generated tokens) the engine will hold; the pool must hold
    at least one, and the compiled step's page tables are this long.
    """

    def __init__(self, model, *, batch_size=16, max_len=None, kv_cache_gb=None, page_size=PAGE_SIZE,
                 step_tokens=STEP_TOKENS, compile=False):
        cfg, p = model.config, next(model.parameters())
        self.model, self.batch_size, self.page_size, self.step_tokens = model, batch_size, page_size, step_tokens
        self.max_len = max_len or cfg.max_position_embeddings
        self.max_pages = cdiv(self.max_len, page_size)
        per_token = kv_bytes_per_token(model)
        if kv_cache_gb is None:
            share = GPU_KV_SHARE if p.device.type == "cuda" else CPU_KV_SHARE
            budget = int(free_memory(p.device) * share)
        else:
            budget = int(kv_cache_gb * 1e9)
        # Never more than every row at its longest; page 0 is scratch, where padding tokens are written.
        n_pages = min(budget // (per_token * page_size), batch_size * self.max_pages) + 1
        if n_pages - 1 < self.max_pages:
            need = self.max_pages * page_size * per_token
            given = f"--kv-cache-gb {kv_cache_gb:g}" if kv_cache_gb is not None else "the memory free for it"
            raise CacheTooSmall(f"the KV cache is too small: {given} holds {(n_pages - 1) * page_size} tokens, but "
                                f"a sequence may grow to {self.max_len} (its prompt and max_new_tokens); the smallest "
                                f"that works is --kv-cache-gb {gb_at_least(need):g}")
        if any(layer.self_attn.kv_cache is not None for layer in model.model.layers):  # the caches live in the model
            raise RuntimeError("this model already holds a KV cache (another Engine's, or setup_cache()'s); "
                               "close that first")
        # (layers, 2, n_kv, slots, hd): K and V of every layer. Zeros: even a masked-out slot must not be NaN.
        self.kv = torch.zeros(cfg.num_hidden_layers, 2, cfg.num_key_value_heads, n_pages * page_size, cfg.head_dim,
                              dtype=p.dtype, device=p.device)
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.kv_cache = PagedAttention(self.kv[i, 0], self.kv[i, 1])
        self.free = list(range(n_pages - 1, 0, -1))  # a stack: pop() takes the lowest page
        self.n_pages, self.bytes_per_token, self.device = n_pages - 1, per_token, p.device
        self.seqs, self.waiting, self.running = {}, deque(), []  # id -> Sequence; FIFO; in order of admission
        self.steps = self.prefill_tokens = self.preemptions = self.peak_pages = 0  # for the benchmarks
        self.compiled = None
        if compile:
            self.buckets = [2**i for i in range(batch_size.bit_length()) if 2**i < batch_size] + [batch_size]
            # One graph per batch bucket for this engine's shapes (pool, page tables): room for them all
            # (past the limit a fullgraph compile fails rather than run FlexAttention eagerly).
            torch._dynamo.config.recompile_limit += len(self.buckets)
            # CUDA graphs replay the whole step, which removes the per-kernel launch cost that dominates
            # small batches on a GPU.
            self.compiled = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)

    def close(self):
        """Give the model back without its page caches (and the pool's memory with them)."""
        for layer in self.model.model.layers:
            layer.self_attn.kv_cache = None
        self.kv = None

    # ---- the caller's side

    def add(self, id, tokens):
        if not 0 < len(tokens) <= self.max_len:
            raise ValueError(f"a sequence of {len(tokens)} tokens; this engine holds 1 to {self.max_len}")
        self.seqs[id] = seq = Sequence(id, list(tokens))
        self.waiting.append(seq)

    def append(self, id, token):
        seq = self.seqs[id]
        if len(seq.tokens) >= self.max_len:
            raise ValueError(f"sequence {id!r} would outgrow max_len={self.max_len}")
        seq.tokens.append(token)

    def finish(self, id):
        seq = self.seqs.pop(id)
        if seq in self.running:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.release(seq)

    def __len__(self):
        return len(self.seqs)

    # ---- pages and scheduling

    def pages_short(self, seq) -> int:
        """Pages the sequence still needs to hold every one of its tokens."""
        return cdiv(len(seq.tokens), self.page_size) - len(seq.pages)

    def grow(self, seq):
        seq.pages += [self.free.pop() for _ in range(self.pages_short(seq))]
        self.peak_pages = max(self.peak_pages, self.n_pages - len(self.free))

    def release(self, seq):
        self.free += reversed(seq.pages)
        seq.pages, seq.cached = [], 0

    def preempt(self, seq):
        """Free a running sequence's pages; it waits at the head of the queue and is recomputed when readmitted."""
        self.running.remove(seq)
        self.release(seq)
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def schedule(self) -> list[tuple[Sequence, int]]:
        """The sequences of the next step, each with how many of its tokens it feeds."""
        # Admit the oldest waiting sequences while a batch row and pages for all their tokens are free.
        while (self.waiting and len(self.running) < self.batch_size
               and self.pages_short(self.waiting[0]) <= len(self.free)):
            seq = self.waiting.popleft()
            self.grow(seq)
            self.running.append(seq)
        # Prefill first: new sequences and those with several tokens to feed (preempted ones, readmitted),
        # as many as fit in step_tokens once padded to the longest chunk (a chunk of one if it is long).
        prefill, T = [], 0
        for seq in self.running:
            n = min(len(seq.tokens) - seq.cached, self.step_tokens)
            if (n > 1 or seq.cached == 0) and (not prefill or (len(prefill) + 1) * max(T, n) <= self.step_tokens):
                prefill.append((seq, n))
                T = max(T, n)
        if prefill:
            return prefill
        # Decode: every running sequence feeds its one new token, for which it may need a page; when none
        # is free, the newest sequence gives its pages back (possibly the one asking).
        for seq in list(self.running):
            while seq in self.running and self.pages_short(seq) > len(self.free):
                self.preempt(self.running[-1])
            if seq in self.running:
                self.grow(seq)
        return [(seq, 1) for seq in self.running]

    # ---- the batched forward pass

    @torch.no_grad()
    def step(self) -> tuple[list, torch.Tensor | None]:
        batch = self.schedule()
        if not batch:
            return [], None
        logits = self.forward(batch)
        ready = []
        for i, (seq, n) in enumerate(batch):
            seq.cached += n
            if seq.cached == len(seq.tokens):  # not a chunk of a longer prefill
                ready.append(i)
        self.steps += 1
        self.prefill_tokens += sum(n for _, n in batch if n > 1)
        if len(ready) < len(batch):
            logits = logits.index_select(0, torch.tensor(ready, dtype=torch.long, device=logits.device))
        return [batch[i][0].id for i in ready], logits

    def forward(self, batch) -> torch.Tensor:
        """
        Feed each sequence of `batch` its next n tokens, left-padded to a common length T so that each
        row's last token is the last column: returns the logits after it, (len(batch), vocab).
        """
        P, dev = self.page_size, self.device
        compiled = self.compiled is not None and all(n == 1 for _, n in batch)
        B = next(b for b in self.buckets if b >= len(batch)) if compiled else len(batch)
        T = max(n for _, n in batch)
        W = self.max_pages if compiled else max(len(seq.pages) for seq, _ in batch)  # page table width
        tokens, positions, tables = [], [], []
        for seq, n in batch:
            tokens.append([0] * (T - n) + seq.tokens[seq.cached:seq.cached + n])
            positions.append([-1] * (T - n) + list(range(seq.cached, seq.cached + n)))  # -1: padding
            tables.append(seq.pages + [0] * (W - len(seq.pages)))
        for _ in range(B - len(batch)):  # rows padding a compiled batch up to its bucket: scratch page only
            tokens.append([0])
            positions.append([-1])
            tables.append([0] * W)
        idx = torch.tensor(tokens, device=dev)  # (B, T)
        pos = torch.tensor(positions, device=dev)  # (B, T)
        table = torch.tensor(tables, device=dev)  # (B, W)
        real, pos = pos >= 0, pos.clamp(min=0)  # a padding query sits at position 0: it sees one key, no NaN
        write = torch.where(real, table.gather(1, pos // P) * P + pos % P, 0)  # (B, T) pool slots
        if compiled:
            lists = page_lists(table, pos[:, -1] + 1, P, self.kv.size(3) // P)
            group = self.model.config.num_attention_heads // self.model.config.num_key_value_heads
            logits = self.compiled(self.model, idx, write, pos, lists, P, group)
            return logits[:len(batch)]
        S = max(seq.cached + n for seq, n in batch)  # the longest row once this step's tokens are in
        j = torch.arange(S, device=dev)
        read = table.index_select(1, j // P) * P + j % P  # (B, S) pool slot of each row's j-th token (or unused)
        mask = j <= pos[:, :, None]  # (B, T, S): causal, and nothing beyond the row's own tokens
        return self.model(idx, input_pos=(write, read), position_ids=pos, mask=mask[:, None], last_only=True)[:, -1]
