"""Running mean and standard deviation of a stream of scalar batches (exact or exponential), JSON-checkpointable."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from grpo_custom.rewards.guard import classify_reward_tensor


def _bessel_variance(m2: float, count: int) -> float:
    """Bessel-corrected variance ``m2 / (count − 1)``, taken as 0 while ``count < 2``."""
    return m2 / (count - 1) if count > 1 else 0.0


def _check_momentum(momentum: Any, who: str) -> None:
    """A momentum is ``None`` (exact statistics) or a number in (0, 1]."""
    if momentum is not None and (
        isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 < momentum <= 1.0
    ):
        raise ValueError(f"{who}: momentum must be None or a number in (0, 1], got {momentum!r}.")


class RunningMoments:
    """Running mean and standard deviation of a stream of scalar batches.

    Exact (``momentum=None``), Chan et al.'s parallel update of (count n, mean μ, M2) with a batch
    (n_b, μ_b, M2_b), δ = μ_b − μ:  n' = n + n_b;  μ' = μ + δ·n_b/n';  M2' = M2 + M2_b + δ²·n·n_b/n'
    (https://en.wikipedia.org/wiki/Algorithms_for_calculating_variance#Parallel_algorithm);
    std = sqrt(M2/(n − 1)) (Bessel), 0 while n < 2.

    Exponential (``momentum=m`` in (0, 1]): μ' = (1 − m)·μ + m·μ_b;  var' = (1 − m)·var + m·var_b, with
    var_b the batch's Bessel variance (0 for one value); the first batch sets μ and var; std = sqrt(var).

    NaN values are ignored. Statistics are Python floats (float64), so :meth:`state_dict` is JSON-ready
    and a round trip is exact.

    Args:
        momentum: ``None`` for exact statistics over everything seen, else the EMA weight of a new batch.
    """

    def __init__(self, momentum: float | None = None):
        _check_momentum(momentum, "RunningMoments")
        self.momentum = None if momentum is None else float(momentum)
        self.count = 0
        self.mean = 0.0
        self.spread = 0.0  # exact: M2 (sum of squared deviations); exponential: variance

    def update(self, values: torch.Tensor) -> None:
        """Fold the finite entries of ``values`` (any shape) into the statistics: NaN (unscored) and ±inf (a bad
        value, by the guard's :func:`~grpo_custom.rewards.guard.classify_reward_tensor`) are left out."""
        values, _ = classify_reward_tensor(values.reshape(-1), nan_means_unscored=True)
        values = values[~torch.isnan(values)]
        batch_count = values.numel()
        if batch_count == 0:
            return
        batch_mean = values.mean().item()
        batch_m2 = ((values - batch_mean) ** 2).sum().item()
        if self.momentum is None:
            total = self.count + batch_count
            delta = batch_mean - self.mean
            self.mean += delta * batch_count / total
            self.spread += batch_m2 + delta * delta * self.count * batch_count / total
        else:
            batch_var = _bessel_variance(batch_m2, batch_count)
            if self.count == 0:
                self.mean, self.spread = batch_mean, batch_var
            else:
                self.mean = (1.0 - self.momentum) * self.mean + self.momentum * batch_mean
                self.spread = (1.0 - self.momentum) * self.spread + self.momentum * batch_var
        self.count += batch_count

    @property
    def std(self) -> float:
        """Current standard deviation (see the class docstring)."""
        if self.momentum is None:
            return math.sqrt(_bessel_variance(self.spread, self.count))
        return math.sqrt(self.spread)

    def state_dict(self) -> dict:
        """JSON-serializable state: ``{"momentum", "count", "mean", "spread"}``."""
        return {"momentum": self.momentum, "count": self.count, "mean": self.mean, "spread": self.spread}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the momentum must match this instance's."""
        expected = {"momentum", "count", "mean", "spread"}
        if set(state) != expected:
            raise ValueError(f"RunningMoments.load_state_dict: expected keys {sorted(expected)}, got {sorted(state)}.")
        if state["momentum"] != self.momentum:
            raise ValueError(
                f"RunningMoments.load_state_dict: state has momentum {state['momentum']!r}, this instance "
                f"{self.momentum!r}."
            )
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.spread = float(state["spread"])

