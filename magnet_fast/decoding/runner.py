"""The one static runner under both decoders (MAGNeT's ``generate.Decoder`` and MusicGen's
``ar.ARDecoder``; docs/DESIGN.md, GPU runtime): one key type, static copies of the condition K/V, the graph
record/replay protocol, the non-finite flag and the decoder-cache lookup.

A decoder is a ``StaticRunner`` subclass that allocates its buffers once and runs *step functions* (pure
tensor code over those buffers: no host sync, no data-dependent Python) through ``run_step``. Graph modes:

- ``None``: every step runs eagerly.
- ``"cuda"``: the first time a step key runs, it runs eagerly (the real result; it also warms cuBLAS and
  Triton), then the same body is captured into a CUDA graph in the runner's memory pool (capture executes
  nothing, so no state needs restoring); later runs replay it.
- ``"fx"``: the same protocol with ``make_fx`` traces standing in for graphs, on any device (tracing
  executes the ops, so the buffers the step writes are restored after it). CPU tests use it to check that
  nothing a recording freezes depends on the call.
- ``"compile"``: every run goes through ``torch.compile(fullgraph=True, backend="eager")``: a host sync or
  data-dependent Python fails there (the CPU check of a static step's graph safety).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch

from magnet_fast.errors import NumericsError, ParameterError

GRAPH_MODES = (None, "cuda", "fx", "compile")
NONFINITE = ("non-finite probabilities reached sampling (overflow in the LM or CFG?); try float32 "
             "(dtype='float32') or a smaller cfg coefficient")


class RunnerKey(NamedTuple):
    """What a cached decoder (its buffers and recorded steps) is valid for: the fields every family shares,
    plus ``spec``, the family's own hashable part (MAGNeT: sampling parameters, backend, key lengths,
    sampler, rescoring; MusicGen: parameters and static step). ``weights`` hashes the parameters' addresses
    (``MagnetLM.weights_token``): a recording that outlived replaced parameters would read freed memory."""
    family: str
    model: int
    device: str
    dtype: torch.dtype
    batch: int
    frames: int
    text_len: int
    n_prompt: int
    graphs: str | None
    weights: int
    spec: tuple

    def eager(self) -> RunnerKey:
        """The same shape without graphs (what the 'auto' graph policy counts sightings of)."""
        return self._replace(graphs=None)


def runner_key(family: str, lm, batch: int, frames: int, text_len: int, n_prompt: int, graphs: str | None,
               spec: tuple) -> RunnerKey:
    return RunnerKey(family, id(lm), str(lm.device), lm.compute_dtype, batch, frames, text_len, n_prompt, graphs,
                     lm.weights_token(), spec)


def static_copy(held, kv, graphs: str | None):
    """Per-layer (k, v) of this call. Eager: the caller's tensors. Under graphs: copies at fixed addresses
    (made once, refilled by later calls), since recorded steps read those addresses."""
    if graphs is None:
        return kv
    if held is None:
        return [(k.clone(), v.clone()) for k, v in kv]
    for (sk, sv), (k, v) in zip(held, kv, strict=True):
        sk.copy_(k)
        sv.copy_(v)
    return held


def fill_noise(buf: torch.Tensor, generator) -> torch.Tensor:
    """Refill ``buf`` ([B, ...]) with Exp(1) noise in place: the draws torch.multinomial makes (one stream
    for the batch), or row i from generator[i]. Always eager, before a step (recorded or not), so seeds and
    the RNG state after a call behave exactly as in eager decoding."""
    if isinstance(generator, list):
        for row, g in zip(buf, generator, strict=True):
            row.exponential_(1, generator=g)
        return buf
    return buf.exponential_(1, generator=generator)


class StaticRunner:
    """Buffers allocated once, steps run eagerly or recorded/replayed (see the module docstring), and a
    device flag that steps OR "a probability was not finite" into, read once per call."""

    def __init__(self, lm, graphs: str | None):
        if graphs not in GRAPH_MODES:
            raise ParameterError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        if graphs == "cuda" and lm.device.type != "cuda":
            raise ParameterError(f"CUDA graphs need a CUDA device; the model is on {lm.device}")
        self.lm, self.graphs = lm, graphs
        self.flag = torch.zeros((), dtype=torch.bool, device=lm.device)
        self.recorded: dict = {}                            # step key -> replay callable
        self._pool = torch.cuda.graph_pool_handle() if graphs == "cuda" else None

    def buffers(self) -> list[torch.Tensor]:
        """Every long-lived tensor a recorded step may read or write (tests check recordings read no other)."""
        raise NotImplementedError

    def written(self) -> list[torch.Tensor]:
        """The buffers a step writes (restored after an ``fx`` trace, which executes the ops)."""
        raise NotImplementedError

    def run_step(self, key, body) -> None:
        """Run ``body()`` (a step over the buffers) under the runner's graph mode; ``key`` names the step."""
        replay = self.recorded.get(key)
        if replay is not None:
            replay()
            return
        if self.graphs == "compile":
            self.recorded[key] = torch.compile(body, fullgraph=True, dynamic=False, backend="eager")
            self.recorded[key]()
            return
        body()                                  # eager: the real step (and the warm-up of a recording)
        if self.graphs == "cuda":
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):      # records only: nothing runs here
                body()
            self.recorded[key] = graph.replay
        elif self.graphs == "fx":
            from torch.fx.experimental.proxy_tensor import make_fx
            written = self.written()
            saved = [t.clone() for t in written]
            traced = make_fx(body)()                          # tracing runs the ops: undo them
            for buf, old in zip(written, saved, strict=True):
                buf.copy_(old)
            self.recorded[key] = traced

    def check_finite(self) -> None:
        """The call's only host sync: NumericsError if any step saw a non-finite probability."""
        if self.flag:
            raise NumericsError(NONFINITE)


def cached(cache, key, build):
    """The decoder for ``key`` from ``cache`` (a dict, e.g. the engine's DecoderCache; None: no caching),
    built by ``build()`` when absent, and marked most recently used."""
    runner = None if cache is None else cache.get(key)
    if runner is None:
        runner = build()
        if cache is not None:
            cache[key] = runner
    if isinstance(cache, OrderedDict):
        cache.move_to_end(key)
    return runner
