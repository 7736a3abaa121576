"""The value function (critic) of grpo-custom: the fourth GRPO component, in one room.

- :mod:`.config`: ``ValueFunctionConfig`` (``GRPOConfig(value_function={...})``), validated once;
- :mod:`.capture`: the policy's hidden states read from forwards that run anyway, aligned to "the state before
  each completion token" in every layout (TRL, Unsloth padded, Unsloth sequence packing);
- :mod:`.head`: the value head and its own optimizer;
- :mod:`.critic`: a trainer's critic (built on first use);
- :mod:`.rollout`: V_old at generation, the critic's returns, the batch keys (fork hooks call these);
- :mod:`.loss_term`: the value loss in both loss paths, the head's step, the warm-up;
- :mod:`.state`: checkpoint and ``save_model`` files.

The pure math (GAE, the clipped value loss, explained variance, adaptive λ) lives in ``grpo_custom.algorithms``.
"""
from grpo_custom.value.config import KINDS, ValueFunctionConfig, parse_value_function

__all__ = ["KINDS", "ValueFunctionConfig", "parse_value_function"]
