"""``Trainer``: MAGNeT fine-tuning on the engine's model, with audiocraft's objective (objective.py).

Parity contract (docs/finetuning.md): after ``random.seed(s); torch.manual_seed(s)``, on CPU fp32 with
``attention="exact"``, ``trainer.loss`` equals audiocraft's ``MagnetSolver.run_step`` loss and its gradients
(tests/train/test_parity.py against fixtures that audiocraft itself wrote).
"""
from __future__ import annotations

import dataclasses
import math
import random as _random
import shutil
from pathlib import Path

import torch

from magnet_fast.config import MagnetConfig
from magnet_fast.errors import ConfigError, NumericsError, ParameterError
from magnet_fast.nn.loading import load_lm
from magnet_fast.train import objective as obj

CFG_DROPOUT_SEED = 1234        # audiocraft's ClassifierFreeGuidanceDropout generator seed
ADAMW_BETAS = (0.9, 0.95)      # audiocraft's MusicGen/MAGNeT solver default (solver/musicgen/default.yaml)
ADAMW_EPS = 1e-8
MAX_GRAD_NORM = 1.0


def default_attention(device: torch.device) -> str:
    """'sdpa' on CPU (torch's fused attention and its backward: the fastest CPU training step measured,
    bench/train.py); on CUDA 'triton' once the banded kernel has its backward
    (``kernels.banded_attn.HAS_BACKWARD``), else 'sdpa'."""
    if device.type != "cuda":
        return "sdpa"
    try:
        from magnet_fast.kernels import banded_attn
        return "triton" if banded_attn.HAS_BACKWARD else "sdpa"
    except ImportError:
        return "sdpa"


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` (step counts from 0)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if total <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Fine-tunes a converted MAGNeT folder. Build it with ``Trainer.from_pretrained``."""

    def __init__(self, lm, text, cfg: MagnetConfig, folder: Path, *, device, autocast_dtype, lr: float,
                 weight_decay: float, cfg_dropout: float, word_dropout: float, lora_rank: int, seed):
        self.model = lm
        self.text = text
        self.config = cfg
        self.folder = Path(folder)
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.cfg_dropout = float(cfg_dropout)
        self.word_dropout = float(word_dropout)
        self.lora_rank = int(lora_rank)
        self.base_lr = float(lr)
        self.span_len = cfg.span_len
        self.frames = cfg.frames
        self._table = torch.tensor(obj.maskrate_to_spans_table(cfg.frames, cfg.span_len), device=device)
        self.cfg_generator = torch.Generator().manual_seed(CFG_DROPOUT_SEED)   # advances call by call
        self.schedule = (0, 0)          # (warmup, total): set_schedule; (0, 0) keeps lr constant
        self.step_count = 0             # optimizer steps taken
        if seed is not None:
            _random.seed(seed)
            torch.manual_seed(seed)
        if self.lora_rank > 0:
            from magnet_fast.train.lora import add_lora
            self.params = add_lora(lm, self.lora_rank)
        else:
            lm.requires_grad_(True)     # the LM + the text projection (audiocraft's trainable set); T5 apart
            self.params = [p for p in lm.parameters() if p.requires_grad]
        lm.train()
        # foreach: one multi-tensor update (torch picks the per-tensor loop on CPU by default)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.base_lr, betas=ADAMW_BETAS, eps=ADAMW_EPS,
                                           weight_decay=weight_decay, foreach=True)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model_dir, *, t5=None, device="cpu", dtype=None, attention=None, lr=1e-5,
                        weight_decay=0.0, cfg_dropout=0.3, word_dropout=0.3, lora_rank=0, seed=None) -> Trainer:
        """Load a converted MAGNeT folder for training: float32 master weights on ``device``; ``dtype`` is the
        autocast compute dtype (None: bfloat16 on CUDA, float32 on CPU). attention: None picks
        ``default_attention``; 'exact' is the parity mode. seed: seeds Python's and torch's global RNGs."""
        from magnet_fast.engines.inputs import check_device, check_dtype
        from magnet_fast.nn.conditioning import TextEncoder
        folder = Path(model_dir)
        cfg = MagnetConfig.load(folder)
        if cfg.kind != "magnet":
            raise ConfigError(f"{folder} is a {cfg.kind} model; fine-tuning supports MAGNeT models only: "
                              "pass a folder converted from a MAGNeT checkpoint")
        for name, value, hi in (("cfg_dropout", cfg_dropout, 1.0), ("word_dropout", word_dropout, 1.0)):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= hi:
                raise ParameterError(f"{name} must be a probability in [0, 1], got {value!r}")
        if not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ParameterError(f"lr must be a positive finite number, got {lr!r}")
        if not isinstance(weight_decay, (int, float)) or not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ParameterError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or not 0 <= lora_rank <= cfg.dim:
            raise ParameterError(f"lora_rank must be an integer in [0, {cfg.dim}] (0 = full fine-tuning), "
                                 f"got {lora_rank!r}")
        device = check_device(device)
        autocast_dtype = check_dtype(dtype, device)
        lm = load_lm(folder, cfg, device, torch.float32)
        lm.set_attention(attention or default_attention(device))
        if t5 is None:
            t5 = folder / "t5" if (folder / "t5").is_dir() else cfg.t5_name
        text = TextEncoder(t5, device=device)
        if text.dim != cfg.t5_dim:
            raise ConfigError(f"T5 {str(t5)!r} has width {text.dim} but the model expects {cfg.t5_dim}; pass the "
                              "matching T5 with t5=")
        text.model.requires_grad_(False)
        return cls(lm, text, cfg, folder, device=device, autocast_dtype=autocast_dtype, lr=lr,
                   weight_decay=weight_decay, cfg_dropout=cfg_dropout, word_dropout=word_dropout,
                   lora_rank=lora_rank, seed=seed)

    # ------------------------------------------------------------------------------------------ the objective
    def _check(self, tokens, texts, lengths):
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or tokens.dtype.is_floating_point:
            raise ParameterError("tokens must be an integer tensor [B, n_q, T]")
        b, k, t = tokens.shape
        if k != self.config.n_q or not 1 <= t <= self.frames or b < 1:
            raise ParameterError(f"tokens must be [B, {self.config.n_q}, T] with 1 <= T <= {self.frames} "
                                 f"(the model's {self.config.segment_duration:g} s), got {list(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.config.card:
            raise ParameterError(f"token ids must lie in [0, {self.config.card}), got "
                                 f"[{int(tokens.min())}, {int(tokens.max())}]")
        if isinstance(texts, str) or len(texts) != b:
            raise ParameterError(f"texts must be a list of {b} strings (or None), one per row")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long)
            if lengths.shape != (b,) or int(lengths.min()) < 1 or int(lengths.max()) > t:
                raise ParameterError(f"lengths must be {b} frame counts in [1, {t}]")
        return lengths

    def encode_texts(self, texts, py_random=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition dropout, word dropout and T5 (no grad) -> (hidden [B, L, t5_dim], mask [B, L]), drawing
        the random numbers as audiocraft's training-mode condition path does."""
        if torch.rand(1, generator=self.cfg_generator).item() < self.cfg_dropout:
            texts = [None] * len(texts)
        entries = [t if t is not None else "" for t in texts]
        if self.word_dropout > 0:
            entries = obj.word_dropout(entries, self.word_dropout, py_random)
        batch = self.text.tokenizer(entries, return_tensors="pt", padding=True)
        mask = batch["attention_mask"].clone()
        mask[[i for i, e in enumerate(entries) if e == ""], :] = 0
        with torch.no_grad():
            hidden = self.text.model(input_ids=batch["input_ids"].to(self.text.device),
                                     attention_mask=mask.to(self.text.device)).last_hidden_state
        return hidden.to(self.device), mask.to(self.device)

    def loss(self, tokens: torch.Tensor, texts, *, generator: torch.Generator | None = None,
             lengths=None) -> torch.Tensor:
        """The masked-span cross entropy of one batch (a scalar with grad), audiocraft's draw for draw.

        tokens [B, n_q, T] codec ids; texts: B strings or None. generator: None draws from the global RNGs
        (Python's ``random`` for the stage and word dropout, torch's for the times and span starts: the
        parity contract); a torch.Generator draws the torch numbers from it and seeds a private Python RNG
        from it. lengths: valid frames per row (audiocraft's ``padding_with_special_token``: the padded tail
        becomes the mask id and leaves the loss); None: every frame is valid, as audiocraft's default."""
        lengths = self._check(tokens, texts, lengths)
        tokens = tokens.to(self.device, torch.long)
        py = None if generator is None else _random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        lm = self.model
        b, n_q, t = tokens.shape
        hidden, mask = self.encode_texts(list(texts), py)
        valid = None
        if lengths is not None:
            valid = torch.arange(t, device=self.device).unsqueeze(0) < lengths.to(self.device).unsqueeze(1)
            tokens = torch.where(valid.unsqueeze(1), tokens, torch.full_like(tokens, lm.mask_id))
        stage = obj.sample_stage(n_q, py)
        rates = obj.sample_mask_rates(b, self.device, generator)
        # audiocraft's table is built once, for the model's segment length; the starts are drawn over T
        stage_mask = obj.span_mask(rates, t, self._table, self.span_len, generator)
        inputs = obj.masked_inputs(tokens, stage, stage_mask, lm.mask_id)
        loss_mask = stage_mask if valid is None else stage_mask & valid
        with self._autocast():
            kv = lm.cross_kv(lm.project_text(hidden, mask))
            if lm.gathers_head:          # the head only where the loss looks (same math, fewer FLOPs)
                x = lm.hidden(inputs, kv, stage)[loss_mask]
                head = lm.heads[stage]
                logits = head(x.to(head.weight.dtype)).float()
                return torch.nn.functional.cross_entropy(logits, tokens[:, stage][loss_mask])
            logits = lm(inputs, kv, stage).float()
        return obj.masked_cross_entropy(logits, tokens[:, stage], loss_mask)

    def _autocast(self):
        import contextlib
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------------------------------ optimisation
    def set_schedule(self, total_steps: int, warmup: int = 0) -> None:
        """Linear warmup over ``warmup`` steps then cosine decay to 0 at ``total_steps`` (``lr_at``)."""
        self.schedule = (int(warmup), int(total_steps))

    def current_lr(self) -> float:
        warmup, total = self.schedule
        return self.base_lr if total == 0 else lr_at(self.step_count, self.base_lr, warmup, total)

    def backward(self, tokens, texts, *, lengths=None, scale: float = 1.0) -> float:
        """One micro-batch: loss, NaN check, backward of loss * scale (gradient accumulation); returns the loss."""
        loss = self.loss(tokens, texts, lengths=lengths)
        if not torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NumericsError(f"the loss is {float(loss.detach())} at step {self.step_count}: training diverged or a "
                                "batch has no masked frame; lower the learning rate (--lr) or check the data")
        (loss * scale).backward()
        return float(loss.detach())

    def optimizer_step(self) -> float:
        """Clip at 1.0, AdamW step at the scheduled lr, zero the gradients; returns the gradient norm."""
        for p in self.params:        # heads of other stages get zero (not missing) gradients, as upstream
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NumericsError(f"non-finite gradient norm at step {self.step_count}; the weights were not "
                                "updated: lower the learning rate (--lr)")
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return float(norm)

    def step(self, tokens, texts, *, lengths=None) -> float:
        """loss, backward, clip at 1.0, optimizer step; returns the loss (float)."""
        loss = self.backward(tokens, texts, lengths=lengths)
        self.optimizer_step()
        return loss

    # ------------------------------------------------------------------------------------------ export
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the converted folder's keys, LoRA adapters merged (float32 copies)."""
        from magnet_fast.train.lora import plain_state_dict
        return {k: v.detach().float().cpu().contiguous().clone() for k, v in plain_state_dict(self.model).items()}

    def export(self, out_dir, *, overwrite: bool = False) -> Path:
        """Write a converted model folder (config.json, model.safetensors float32, the source's t5/ and codec/)
        that ``MagnetFast.from_pretrained`` loads; written to a temporary sibling and renamed into place."""
        from safetensors.torch import save_file

        from magnet_fast.io.files import atomic_dir
        out = Path(out_dir)
        state = self.state_dict()
        cfg = dataclasses.replace(self.config, weights_dtype="float32", notice=None, source={
            **(self.config.source or {}), "finetuned_from": str(self.folder), "finetune_steps": self.step_count,
            "lora_rank": self.lora_rank})
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "magnet_fast/1"})
            cfg.save(tmp)
            for part in ("t5", "codec"):
                if (self.folder / part).is_dir():
                    shutil.copytree(self.folder / part, tmp / part)
        return out
