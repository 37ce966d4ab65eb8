"""Loss-curve PNG: matplotlib when installed, else a small built-in writer (zlib + the PNG chunk format)."""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path


def _png_bytes(pixels: list[bytearray], width: int, height: int) -> bytes:
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def plain_plot(values: list[float], width: int = 640, height: int = 320) -> bytes:
    """A line plot of ``values`` (white background, grey frame, blue line) as PNG bytes."""
    pix = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]
    m = 20

    def put(x, y, rgb):
        if 0 <= x < width and 0 <= y < height:
            pix[y][3 * x:3 * x + 3] = bytes(rgb)
    for x in range(m, width - m):
        put(x, height - m, (128, 128, 128))
        put(x, m, (200, 200, 200))
    for y in range(m, height - m + 1):
        put(m, y, (128, 128, 128))
    vals = [v for v in values if math.isfinite(v)]
    if len(vals) >= 1:
        lo, hi = min(vals), max(vals)
        span = (hi - lo) or 1.0
        n = len(values)
        prev = None
        for i, v in enumerate(values):
            if not math.isfinite(v):
                continue
            x = m + round(i * (width - 2 * m - 1) / max(1, n - 1))
            y = height - m - round((v - lo) / span * (height - 2 * m - 1))
            if prev is not None:        # straight segment from the previous point
                steps = max(abs(x - prev[0]), abs(y - prev[1]), 1)
                for s in range(steps + 1):
                    put(prev[0] + round((x - prev[0]) * s / steps), prev[1] + round((y - prev[1]) * s / steps),
                        (31, 119, 180))
            prev = (x, y)
    return _png_bytes(pix, width, height)


def write_loss_curve(path: Path, steps: list[int], losses: list[float]) -> None:
    from magnet_fast.io.files import atomic_file, atomic_write_bytes
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        atomic_write_bytes(Path(path), plain_plot(losses))
        return
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
