"""Serving: ``magnet-fast serve`` and ``magnet_fast.serve.create_app(models, **settings)`` (a FastAPI app)
with a dynamic-batching scheduler, a web page, Prometheus metrics and Ray Serve scale-out
(docs/serving.md). Needs the serve extra: ``pip install -e ".[serve]"``.

Importing this package needs nothing beyond the base install; ``create_app`` imports FastAPI when called.
"""
from __future__ import annotations

__all__ = ["create_app", "build_ray_app"]


def __getattr__(name: str):
    if name == "create_app":
        from magnet_fast.serve.app import create_app
        return create_app
    if name == "build_ray_app":
        from magnet_fast.serve.ray_serve import build_ray_app
        return build_ray_app
    raise AttributeError(f"module 'magnet_fast.serve' has no attribute {name!r}")
