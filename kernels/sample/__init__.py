"""Fused sampling + span selection for one MAGNeT decoding step (see naive.py for the semantics).

``sample_step_op``, ``next_mask_nonoverlap`` and ``next_mask_stride1`` live in ``triton.py`` (custom op
``magnet_fast::sample_step``: Triton on CUDA, naive.py on CPU) and are imported lazily.
"""
__all__ = ["next_mask_nonoverlap", "next_mask_stride1", "sample_step_op"]


def __getattr__(name):
    if name in __all__:
        from magnet_fast.kernels.sample import triton as _triton
        return getattr(_triton, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
