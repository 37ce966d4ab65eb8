"""Fused sampling + span scores for one MAGNeT decoding step (see naive.py for the semantics).

``sample_step_op`` lives in ``triton.py`` (custom op ``magnet_fast::sample_step``: Triton on CUDA, naive.py
on CPU) and is imported lazily. The next masked set is chosen with naive.py (``select_spans`` +
``spans_to_tokens``, ``select_stride1``); constants shared by both live in ``magnet_fast.kernels.constants``.
"""
__all__ = ["sample_step_op"]


def __getattr__(name):
    if name in __all__:
        from magnet_fast.kernels.sample import triton as _triton
        return getattr(_triton, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
