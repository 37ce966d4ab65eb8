"""What the API needs around the decoding loop: the cache of Decoders (and their CUDA graphs), random
streams from seeds, and decoding in chunks that halve when the device runs out of memory
(docs/DESIGN.md, GPU runtime)."""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import torch

from magnet_fast.errors import BatchSplitWarning, ResourceError

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)   # torch < 2.5: cuda only
GRAPH_POLICIES = (False, True, "auto")


class DecoderCache(OrderedDict):
    """Decoders by ``DecoderKey``, least recently used first, at most ``capacity`` of them; ``lock``
    serialises calls on one model while cached buffers (shared by their recordings) are in use.

    Graph policy (``mode_for``): False never records; True records a shape on its first call; "auto"
    records a shape on its second call (the first runs eagerly and caches nothing), so one-off shapes
    cost no recording and repeated ones replay."""

    def __init__(self, capacity: int = 4):
        super().__init__()
        self.capacity = capacity
        self.lock = threading.RLock()
        self._seen: OrderedDict = OrderedDict()           # eager keys met under the 'auto' policy

    def evict(self) -> None:
        while len(self) > max(0, self.capacity):
            self.popitem(last=False)

    def recorded_steps(self) -> int:
        """How many steps are recorded across the cached decoders (plus one per decoder: a change during
        a timed loop means the timings include recording)."""
        return sum(len(d.recorded) for d in self.values()) + len(self)

    def clear(self) -> None:
        super().clear()
        self._seen.clear()

    def mode_for(self, eager_key, policy, mode: str) -> str | None:
        """The graph mode for a call of this shape under ``policy`` (see the class docstring)."""
        if policy is True:
            return mode
        if policy != "auto":
            return None
        if eager_key in self._seen:
            return mode
        self._seen[eager_key] = True
        while len(self._seen) > 64:
            self._seen.popitem(last=False)
        return None


def streams(seeds: list[int] | None, per_row: bool, device: torch.device):
    """Fresh generator(s) for a call: one stream seeded like ``torch.manual_seed`` (audiocraft's draw
    order), or one per row (``per_row``); None when there is no seed. A callable, so a retry after running
    out of memory starts the streams over."""
    if seeds is None:
        return None

    def make():
        g = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        return g if per_row else g[0]
    return make


_CPU_ALLOC_FAILURES = ("can't allocate memory", "not enough memory", "failed to allocate memory")


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OutOfMemoryError, or the plain RuntimeError a CPU allocation failure raises
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate ...")."""
    if isinstance(e, OUT_OF_MEMORY):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(m in text for m in _CPU_ALLOC_FAILURES)


def decode_in_chunks(run_chunk, n: int, max_batch: int | None, *, device: torch.device, invariant: bool,
                     on_retry=None) -> list:
    """``run_chunk(slice)`` over chunks of at most ``max_batch`` rows (all rows when None), in order.

    Out of memory without ``max_batch``: ``on_retry()`` (free caches), the chunk size halves and the whole
    call starts over (a BatchSplitWarning says so); with ``max_batch``, or when one row does not fit, a
    ResourceError that names what to do."""
    size = max_batch or n
    while True:
        out, start = [], 0
        try:
            for start in range(0, n, size):
                out.append(run_chunk(slice(start, start + size)))
            return out
        except RuntimeError as e:                           # OutOfMemoryError is one; CPU's is a plain one
            if not is_out_of_memory(e):
                raise
            failed = min(size, n - start)                   # the chunk that did not fit
        out = None          # cleanup outside the except block: its traceback pinned the failed frames
        if on_retry is not None:
            on_retry()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if max_batch is not None or failed == 1:
            raise ResourceError(f"out of {device.type} memory decoding a batch of {failed}; pass "
                                f"max_batch={max(1, failed // 2)} (CLI: --max-batch) or use fewer "
                                "descriptions per call" if failed > 1 else
                                f"out of {device.type} memory decoding a single description; "
                                "free memory, use a lower-precision dtype or a smaller model")
        size = (failed + 1) // 2
        note = ("" if invariant else " (audiocraft mode: each chunk is conditioned and sampled as its own "
                "batch, so rows differ from an unsplit run; batch_invariant=True avoids that)")
        warnings.warn(f"out of {device.type} memory with a batch of {failed}; decoding in chunks of {size} "
                      f"instead{note}. Pass max_batch= to choose.", BatchSplitWarning, stacklevel=3)
