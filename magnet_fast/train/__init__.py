"""Fine-tuning MAGNeT on the engine (docs/finetuning.md): ``Trainer`` (the objective, exact against
audiocraft's MagnetSolver), data preparation and the ``prepare`` / ``finetune`` commands."""
from magnet_fast.train.trainer import Trainer

__all__ = ["Trainer"]
