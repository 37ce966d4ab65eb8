"""Kernels of magnet_fast (installed as ``magnet_fast.kernels``; never import a top-level ``kernels``).

Each op lives in its own folder beside a plain-PyTorch ``naive.py`` that is its ground truth.
"""
