"""Value-function hooks: what the fork's edits call for the critic (:mod:`grpo_custom.value`).

The critic itself lives in ``grpo_custom.value``; these are the trainer-facing entry points the edits in
``patches/grpo_trainer.py`` and the other hooks call. Without ``value_function`` each is a no-op.
"""
from __future__ import annotations

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from grpo_custom.value.critic import critic_of
from grpo_custom.value.loss_term import begin_value_capture, value_function_loss
from grpo_custom.value.rollout import add_value_outputs, gathered_values, record_returns, rollout_values

__all__ = ["add_value_outputs", "begin_value_capture", "check_value_function", "gathered_values", "load_value_state",
           "record_returns", "rollout_values", "save_value_state", "value_function_loss"]


def check_value_function(trainer) -> None:
    """Once ``Trainer.__init__`` has run, before any generation: what ``value_function`` needs of the model.

    Raises:
        ValueError: the model has no decoder the head can read, ``layers`` names a hidden state the model lacks
            (naming its layer count), or kind ``adapter`` on a policy that is not a PEFT LoRA model.
    """
    config = getattr(trainer.args, "value_function_config", None)
    if config is None:
        return
    from grpo_custom.value.capture import decoder_of, resolve_layers

    resolve_layers(config.layers, len(decoder_of(trainer.model).layers))
    if config.kind == "adapter":
        from grpo_custom.value.adapter import check_lora_policy

        check_lora_policy(trainer.model)


def save_value_state(trainer, trial) -> None:
    """Head weights and its optimizer state into this step's checkpoint folder (main process); with
    ``save_only_model=True`` the weights only, as Transformers saves no optimizer state then."""
    critic = critic_of(trainer)
    if critic is None or not trainer.args.should_save:
        return
    import os

    from grpo_custom.value.state import save_checkpoint, save_head

    folder = os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if getattr(trainer.args, "save_only_model", False):
        save_head(critic, folder)
    else:
        save_checkpoint(critic, folder)


def load_value_state(trainer, checkpoint) -> None:
    """Restore the critic from ``checkpoint`` (every process reads the same files)."""
    critic = critic_of(trainer)
    if critic is None or checkpoint is None:
        return
    from grpo_custom.value.state import load_checkpoint

    load_checkpoint(critic, checkpoint)
