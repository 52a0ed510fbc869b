"""
The stage memory.py's estimate runs train.py's step on: a GPU that keeps only shapes (fake tensors on
a device of their own, so the same code runs on a laptop and on the node), FlashAttention's memory in
place of the math fallback such a device would get, and a memory tracker that keeps the peak of each
phase of the step (each forward, each backward, the clipping, the optimizer step) with what was alive
at that moment.

What it leaves out: everything that is not a live tensor's bytes (memory.py's docstring says what).
"""

import contextlib

import torch
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

FAKE_GPU = "gpu"  # the device the estimate's tensors live on: a GPU that only keeps shapes


class _Stream:
    """What FSDP2 asks of a device's streams and events; a GPU that keeps only shapes has nothing to order."""
    stream_id = device_index = device_type = 0  # torch >= 2.15 hands these to a no-op op after reduce-scatter
    def __init__(self, *args, **kwargs): pass
    def wait_stream(self, stream): pass
    def wait_event(self, event): pass
    def record_event(self, event=None): return event or _Stream()
    def record(self, stream=None): return self
    def wait(self, stream=None): pass
    def synchronize(self): pass
    def query(self): return True


class _FakeGPU:
    """The `torch.gpu` module of that GPU: one device, its streams and events, no RNG to keep."""
    Stream = Event = _Stream
    def is_available(self): return True
    def is_initialized(self): return True
    def _is_in_bad_fork(self): return False
    def device_count(self): return 1
    def current_device(self): return 0
    def set_device(self, device): pass
    def synchronize(self, device=None): pass
    def current_stream(self, device=None): return _Stream()
    def stream(self, stream): return contextlib.nullcontext()
    def get_amp_supported_dtype(self): return [torch.float16, torch.bfloat16]  # checkpointing asks
    def get_rng_state(self, device=None): return torch.zeros(16, dtype=torch.uint8)
    def set_rng_state(self, state, device=None): pass
    def manual_seed_all(self, seed): pass


def use_fake_gpu():
    """
    Fake tensors on a GPU, on any machine. FakeTensorMode makes "cuda" tensors without a GPU, but the
    autograd engine asks the device's guard for streams, and a CPU-only build of torch has no CUDA guard
    (the backward pass aborts). So the estimate puts its tensors on a device of its own, torch's Python
    "privateuse1" backend renamed `gpu`, whose guard torch provides; the fake device counts what lives on
    the GPU and "cpu" what lives in host memory. It is the same code path on a laptop and on the node.
    """
    name = torch._C._get_privateuse1_backend_name()
    if name == FAKE_GPU:
        return
    if name != "privateuseone":
        raise RuntimeError(f"the memory estimate needs torch's spare device slot, which {name!r} already holds; "
                           "run the estimate in a process without it")
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend
    _setup_privateuseone_for_python_backend(FAKE_GPU, backend_module=_FakeGPU())


def flash_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """
    F.scaled_dot_product_attention as a GPU runs it in training: FlashAttention, which keeps the output
    and one log-sum-exp per query (O(T) memory) and serves grouped kv heads as they are. A device without
    attention kernels, as the fake GPU, would get the math fallback, which holds the T x T scores (86 GB
    per 32B block at T=32768).
    """
    assert attn_mask is None, "training attends causally, without a mask"
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=scale)[0]

class PhasePeaks(FSDPMemTracker):
    """
    FSDPMemTracker (it counts every tensor alive on each device, by kind) keeping one peak per phase of
    the step rather than one for the whole step and one per module. `phases`: [(name, {device type:
    {kind: bytes at that phase's peak on that device, "Total": their sum}})], in the order they ran; a
    phase is a stretch of "forward", "backward" or "optimizer" (clipping counts as forward: it runs
    outside both). memory.py extrapolates each phase's peak over the number of layers, which one peak
    for the step would not allow: the phase that peaks can change with the depth. It drops torch's
    per-module peaks, which nothing here reads and which cost a walk over every module seen so far
    after every op.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phases = []

    def _update_peak_stats(self, peak_state) -> None:  # torch calls it after every op
        phase = "optimizer" if self._in_opt else "backward" if self._mod_tracker.is_bw else "forward"
        if not self.phases or self.phases[-1][0] != phase:
            self.phases.append((phase, {}))
        peaks = self.phases[-1][1]
        for device, now in self._curr_mem_snap.items():
            if now["Total"] > peaks.get(device.type, {}).get("Total", -1):  # the first moment of the peak, as torch's
                peaks[device.type] = {getattr(kind, "value", kind): n for kind, n in now.items()}
