"""Resumable training state without pickle: safetensors for tensors, JSON for the rest, written atomically.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-NNNNNNNN/`` (weights.safetensors: the trainable
parameters; optimizer.safetensors: AdamW's moments and step counts; rng.safetensors: torch's CPU (and CUDA)
generator and the condition-dropout generator; state.json: param groups, step, data position, Python's RNG
state, recent losses). It appears in one rename (``atomic_dir``); then ``RUN_DIR/latest.json`` is replaced
in one rename to point at it, and only then are older checkpoints removed: a kill or a full disk at any
moment leaves the previous checkpoint whole and pointed to.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from magnet_fast.errors import CheckpointError

LATEST = "latest.json"


def _trainable(trainer) -> dict[str, torch.nn.Parameter]:
    ids = {id(p) for p in trainer.params}
    return {n: p for n, p in trainer.model.named_parameters() if id(p) in ids}


def save(trainer, run_dir: Path, extra: dict) -> Path:
    from safetensors.torch import save_file

    from magnet_fast.io.files import atomic_dir, atomic_write_bytes
    run_dir = Path(run_dir)
    name = f"step-{trainer.step_count:08d}"
    folder = run_dir / "checkpoints" / name
    if folder.exists():                     # a resumed run reached an already-saved step again
        shutil.rmtree(folder)
    params = _trainable(trainer)
    index = {id(p): i for i, p in enumerate(trainer.params)}
    opt = trainer.optimizer.state_dict()
    opt_tensors = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            opt_tensors[f"{pid}.{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).detach().cpu().contiguous()
    rng = {"torch_cpu": torch.get_rng_state(), "cfg_dropout": trainer.cfg_generator.get_state()}
    if torch.cuda.is_available() and trainer.device.type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(trainer.device).cpu()
    py = random.getstate()
    state = {"step": trainer.step_count, "schedule": list(trainer.schedule),
             "param_groups": opt["param_groups"], "param_order": [n for n in params],
             "python_rng": [py[0], list(py[1]), py[2]], **extra}
    assert [index[id(p)] for p in params.values()] == list(range(len(params)))
    with atomic_dir(folder) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "weights.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state))
    atomic_write_bytes(run_dir / LATEST, json.dumps({"checkpoint": f"checkpoints/{name}",
                                                     "step": trainer.step_count}).encode())
    for old in (run_dir / "checkpoints").iterdir():
        if old.name != name and old.name.startswith("step-"):
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest(run_dir: Path) -> Path | None:
    path = Path(run_dir) / LATEST
    if not path.is_file():
        return None
    try:
        folder = Path(run_dir) / json.loads(path.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} is not a checkpoint pointer; delete it to start the run over") from None
    if not (folder / "state.json").is_file():
        raise CheckpointError(f"{path} points at {folder}, which is incomplete; delete the run folder to start over")
    return folder


def load(trainer, folder: Path) -> dict:
    """Restore a checkpoint into ``trainer`` (weights, optimizer, schedule, RNGs); returns state.json."""
    from safetensors.torch import load_file
    folder = Path(folder)
    try:
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "weights.safetensors"))
        opt_t = load_file(str(folder / "optimizer.safetensors"))
        rng = load_file(str(folder / "rng.safetensors"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder} is unreadable ({e}); delete the run folder to start over") from None
    params = _trainable(trainer)
    if state["param_order"] != list(params) or set(weights) != set(params):
        raise CheckpointError(f"checkpoint {folder} was written for other trainable parameters (model or "
                              "--lora-rank changed); use the run's settings or a new --out")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device))
    opt_state: dict = {}
    for key, v in opt_t.items():
        pid, k = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[k] = v.to(trainer.device) if k != "step" else v
    trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    trainer.step_count = int(state["step"])
    trainer.schedule = tuple(state["schedule"])
    torch.set_rng_state(rng["torch_cpu"])
    trainer.cfg_generator.set_state(rng["cfg_dropout"])
    if "torch_cuda" in rng and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(rng["torch_cuda"], trainer.device)
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))
    return state
