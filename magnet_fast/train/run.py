"""``finetune``: the training loop over a prepared data folder, resumable from its last checkpoint.

RUN_DIR holds run.json (the settings; a rerun must use the same ones, else it is refused), latest.json +
checkpoints/ (checkpoint.py), log.jsonl (one line per optimizer step) and loss.png at the end. A rerun of
an interrupted run (kill -9 included) resumes from the last checkpoint and computes the same losses as an
uninterrupted run: the data position, every RNG and the optimizer state are restored.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from magnet_fast.errors import NumericsError, ParameterError
from magnet_fast.io.files import WriteError
from magnet_fast.train import checkpoint as ckpt

RUN_FILE = "run.json"
LOG = "log.jsonl"
CURVE = "loss.png"


@dataclass
class RunSettings:
    data_dir: str
    model: str
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    warmup: int = 0
    weight_decay: float = 0.0
    lora_rank: int = 0
    save_every: int = 100
    device: str = "cpu"
    seed: int = 0
    attention: str | None = None
    cfg_dropout: float = 0.3
    word_dropout: float = 0.3

    def check(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "save_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup <= self.steps:
            raise ParameterError(f"--warmup must be an integer in [0, --steps], got {self.warmup!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ParameterError(f"--lr must be a positive number, got {self.lr!r}")
        if self.batch_size * self.grad_accum > 4096:
            raise ParameterError("--batch-size x --grad-accum above 4096 samples per step; use a smaller batch")


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:          # a line cut by a kill: dropped (it is recomputed)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= upto:
            rows.append(row)
    return rows


def finetune(settings: RunSettings, run_dir, *, progress: bool = True, on_step=None) -> dict:
    """Train (or resume) the run in ``run_dir``; returns {"steps", "final_loss", "log"}."""
    from tqdm import tqdm

    from magnet_fast.config import MagnetConfig
    from magnet_fast.io.files import atomic_write_bytes
    from magnet_fast.train.data import TokenDataset
    from magnet_fast.train.png import write_loss_curve
    from magnet_fast.train.trainer import Trainer
    settings.check()
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        try:
            before = json.loads(run_file.read_text())
        except ValueError:
            raise ParameterError(f"{run_file} is not JSON; delete it or choose another --out") from None
        mine = asdict(settings)
        diff = sorted(k for k in mine if k != "steps" and before.get(k) != mine[k])
        if diff:
            raise ParameterError(f"{run_dir} is a run with other settings ({', '.join(diff)}); rerun with its "
                                 f"settings to resume (see {run_file}) or choose another --out")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ParameterError(f"{run_dir} exists and is not a fine-tuning run folder; choose another --out")
    cfg = MagnetConfig.load(Path(settings.model))
    if cfg.kind != "magnet":
        raise ParameterError(f"{settings.model} is a {cfg.kind} model; finetune takes a MAGNeT model folder")
    data = TokenDataset(settings.data_dir, cfg.n_q, cfg.frames, cfg.card)
    trainer = Trainer.from_pretrained(settings.model, device=settings.device, attention=settings.attention,
                                      lr=settings.lr, weight_decay=settings.weight_decay,
                                      cfg_dropout=settings.cfg_dropout, word_dropout=settings.word_dropout,
                                      lora_rank=settings.lora_rank, seed=settings.seed)
    trainer.set_schedule(settings.steps, settings.warmup)
    position = 0
    last = ckpt.latest(run_dir)
    if last is not None:
        state = ckpt.load(trainer, last)
        position = int(state["position"])
    else:
        atomic_write_bytes(run_file, json.dumps(asdict(settings), indent=1).encode(), make_parents=True)
    trainer.set_schedule(settings.steps, settings.warmup)
    log_path = run_dir / LOG
    log = _read_log(log_path, trainer.step_count)
    atomic_write_bytes(log_path, "".join(json.dumps(r) + "\n" for r in log).encode())
    bar = tqdm(total=settings.steps, initial=trainer.step_count, desc="finetune", unit="step", disable=not progress)
    tokens_per_step = settings.batch_size * settings.grad_accum * cfg.n_q * cfg.frames
    try:
        last = _loop(settings, run_dir, trainer, data, position, log, log_path, last, bar, tokens_per_step, on_step)
    except WriteError:
        raise
    except OSError as e:              # the log or a checkpoint could not be written (disk full, ...)
        from magnet_fast.io.files import write_error
        raise write_error(e, run_dir) from None
    finally:
        bar.close()
    try:
        write_loss_curve(run_dir / CURVE, [r["step"] for r in log], [r["loss"] for r in log])
    except OSError as e:
        from magnet_fast.io.files import write_error
        raise write_error(e, run_dir / CURVE) from None
    return {"steps": trainer.step_count, "final_loss": log[-1]["loss"] if log else None, "log": log}


def _loop(settings, run_dir, trainer, data, position, log, log_path, last, bar, tokens_per_step, on_step):
    with open(log_path, "a", encoding="utf-8") as logf:
        while trainer.step_count < settings.steps:
            t0 = time.perf_counter()
            losses = []
            try:
                for _ in range(settings.grad_accum):
                    toks, texts, lengths = data.batch(position, settings.batch_size, settings.seed)
                    position += settings.batch_size
                    losses.append(trainer.backward(toks, texts, lengths=lengths, scale=1.0 / settings.grad_accum))
                lr = trainer.current_lr()
                norm = trainer.optimizer_step()
            except NumericsError as e:
                keep = f"; the last good checkpoint is {last}" if last is not None else ""
                raise NumericsError(f"{e}{keep}") from None
            dt = time.perf_counter() - t0
            loss = sum(losses) / len(losses)
            row = {"step": trainer.step_count, "loss": loss, "lr": lr, "grad_norm": norm,
                   "tokens_per_s": tokens_per_step / dt, "seconds": dt}
            logf.write(json.dumps(row) + "\n")
            logf.flush()
            log.append(row)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if trainer.step_count % settings.save_every == 0 or trainer.step_count == settings.steps:
                last = ckpt.save(trainer, run_dir, {"position": position})
            if on_step is not None:
                on_step(trainer, row)
    return last


def export_run(run_dir, out_dir, *, overwrite: bool = False) -> Path:
    """The run's last checkpoint -> a converted model folder (LoRA merged) that MagnetFast loads."""
    from magnet_fast.train.trainer import Trainer
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise ParameterError(f"{run_dir} is not a fine-tuning run folder (no {RUN_FILE}); pass the --out of "
                             "`magnet-fast finetune`")
    s = RunSettings(**json.loads(run_file.read_text()))
    last = ckpt.latest(run_dir)
    if last is None:
        raise ParameterError(f"{run_dir} has no checkpoint yet; let `magnet-fast finetune` save one "
                             "(--save-every) first")
    trainer = Trainer.from_pretrained(s.model, device="cpu", lr=s.lr, lora_rank=s.lora_rank,
                                      cfg_dropout=s.cfg_dropout, word_dropout=s.word_dropout)
    ckpt.load(trainer, last)
    return trainer.export(out_dir, overwrite=overwrite)
