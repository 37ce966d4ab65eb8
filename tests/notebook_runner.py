"""Run the code cells of an audiocraft demo notebook against ``magnet_fast.compat``, the way a user would
after changing only the imports (tests/frontends/test_compat_notebook.py runs this in a fresh process).

    python tests/notebook_runner.py NOTEBOOK.ipynb OUT.json [--skip INDEX=REASON ...]

Rewrites, line by line and nothing else: ``from audiocraft.<anything> import X`` -> ``from magnet_fast.compat
import X``; shell and magic lines (``!pip ...``, ``%...``) become ``pass`` with a recorded note. Any other
mention of audiocraft in code is an error (the rewrite would not be import-only). Cells run in order in one
namespace; ``--skip`` leaves a cell out with its reason. OUT.json records, per code cell (index = position
among all cells, as in the notebook): status (ran / skipped / error), the reason or traceback, the rewrites,
seconds, and what ``model`` and ``output`` hold afterwards (names, rates, generation params, shapes).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path

IMPORT = re.compile(r"^(\s*)from\s+audiocraft(?:\.[A-Za-z_][\w.]*)?\s+import\s+(.+)$")
COMPAT = "magnet_fast.compat"


def rewrite(source: str) -> tuple[str, list[str]]:
    """(the cell with its audiocraft imports pointed at the compat module, notes on what changed)."""
    lines, notes = [], []
    for line in source.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith(("!", "%")):
            lines.append(f"{indent}pass")
            notes.append(f"skipped shell/magic line (not Python): {stripped}")
            continue
        m = IMPORT.match(line)
        if m:
            lines.append(f"{m[1]}from {COMPAT} import {m[2]}")
            notes.append(f"{stripped}  ->  from {COMPAT} import {m[2]}")
            continue
        code = line.split("#", 1)[0]
        if re.search(r"\baudiocraft\b", code):
            raise ValueError(f"cell uses audiocraft outside a 'from audiocraft... import' line: {line!r}")
        lines.append(line)
    return "\n".join(lines) + "\n", notes


def code_cells(notebook: Path) -> list[tuple[int, str]]:
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    return [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]


def describe(ns: dict) -> dict:
    import torch
    out: dict = {}
    model = ns.get("model")
    if model is not None and hasattr(model, "generation_params"):
        out["model"] = {"class": type(model).__name__, "module": type(model).__module__,
                        "name": getattr(model, "name", None), "sample_rate": model.sample_rate,
                        "codec_sample_rate": model.compression_model.sample_rate,
                        "frame_rate": model.frame_rate, "audio_channels": model.audio_channels,
                        "duration": model.duration, "max_duration": model.max_duration,
                        "segment_duration": model.lm.cfg.dataset.segment_duration,
                        "generation_params": model.generation_params}
    output = ns.get("output")
    if isinstance(output, tuple) and len(output) == 2 and all(isinstance(t, torch.Tensor) for t in output):
        audio, tokens = output
        out["output"] = {"audio_shape": list(audio.shape), "audio_dtype": str(audio.dtype),
                         "audio_finite": bool(audio.isfinite().all()), "audio_peak": float(audio.abs().max()),
                         "tokens_shape": list(tokens.shape), "tokens_dtype": str(tokens.dtype),
                         "tokens_min": int(tokens.min()), "tokens_max": int(tokens.max())}
    return out


def run(notebook: Path, skip: dict[int, str]) -> dict:
    ns: dict = {"__name__": "__main__"}
    cells = []
    for index, source in code_cells(notebook):
        entry: dict = {"index": index, "source": source}
        cells.append(entry)
        if index in skip:
            entry.update(status="skipped", reason=skip[index])
            continue
        t0 = time.perf_counter()
        try:
            code, notes = rewrite(source)
            entry["rewrites"] = notes
            exec(compile(code, f"<{Path(notebook).name} cell {index}>", "exec"), ns)   # noqa: S102
        except BaseException:                                              # noqa: BLE001 - recorded
            entry.update(status="error", traceback=traceback.format_exc(), seconds=time.perf_counter() - t0)
            break
        entry.update(status="ran", seconds=round(time.perf_counter() - t0, 3), state=describe(ns))
    return {"notebook": str(notebook), "cells": cells}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--skip", action="append", default=[], help="INDEX=REASON")
    args = ap.parse_args(argv)
    skip = {}
    for item in args.skip:
        index, _, reason = item.partition("=")
        skip[int(index)] = reason
    result = run(args.notebook, skip)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print()                                   # end audiocraft's '\r' progress line
    return 0 if all(c["status"] != "error" for c in result["cells"]) else 1


if __name__ == "__main__":
    sys.exit(main())
