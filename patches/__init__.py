"""The fork's edits to upstream files, one named unit each (installed as ``grpo_custom.patches``).

``GRPO_TRAINER_EDITS`` turns TRL's ``trl/trainer/grpo_trainer.py`` into grpo-custom's fork. Every
edit only inserts a call into :mod:`grpo_custom.fork.hooks`; no upstream logic is rewritten, so
the fork stays a small, reviewable diff (print it with ``grpo-custom diff``).
"""
from .grpo_trainer import GRPO_TRAINER_EDITS

__all__ = ["GRPO_TRAINER_EDITS"]
