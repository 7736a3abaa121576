"""Multi-task reward plumbing: routing, per-task normalization, per-task metrics, auditing, balanced sampling.

A multi-task GRPO dataset carries a task label per prompt (a column, ``"task"`` by default). This module
gives the trainer what it needs to treat tasks separately while keeping TRL's data layout
(N = num_prompts × G completions, group ``i // G``):

- :func:`route_rewards` turns ``{task: [reward functions]}`` (or a routing callable) into a flat list of
  TRL reward functions. Each scores only the completions of its own task(s) and returns ``None`` for the
  others, which TRL turns into NaN and leaves out of its NaN-aware weighted sum.
- :class:`TaskNormalizer` rescales the summed rewards per task (within groups, or with running
  per-task statistics) right before the advantage estimator.
- :func:`task_metrics` gives per-task reward/advantage/length statistics for the trainer's metrics.
- :func:`audit_tasks` reports the task mix of a dataset (counts, shares, imbalance, warnings).
- :class:`TaskBalancedSampler` draws prompts so every task is equally frequent, with the exact index
  layout of TRL's ``RepeatSampler`` (each prompt repeated G times consecutively).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Sampler
from trl.trainer.utils import get_callable_name, is_async_callable, nanstd

RewardFunction = Callable[..., list]
Router = Callable[[dict], Sequence[RewardFunction]]


class TaskRoutingError(ValueError):
    """A batch cannot be routed: a sample of an unknown task, no task column, or a bad router answer.

    A configuration error, not a bad reward: the trainer's reward guard lets it through under every
    ``reward_errors`` policy instead of turning it into NaN rewards.
    """


# ----------------------------------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------------------------------


def route_rewards(
    task_rewards: Mapping[str, Sequence[RewardFunction]] | Router,
    task_column: str = "task",
    task_weights: Mapping[str, float | Mapping[str, float]] | None = None,
    all_functions: Sequence[RewardFunction] | None = None,
) -> tuple[list[RewardFunction], list[float]]:
    """Route reward functions to the samples of their task(s); returns TRL reward functions and weights.

    Reward of completion i from wrapped function f: ``f_inner(sample i)`` if sample i routes to f_inner,
    else ``None`` (NaN in TRL). TRL's total reward ``nansum_f(w_f · r_f)`` then sums, for each sample,
    only the functions of its own task; a completion no function scored stays NaN ("unscorable").

    Two ways to route:

    - ``task_rewards={task: [fn, ...]}``: the label is read from ``kwargs[task_column][i]``. One wrapped
      function per distinct inner function (by identity, first-seen order). It is named
      ``"<task>/<fn name>"`` when the function belongs to one task, and ``"<fn name>"`` when it is shared.
      ``task_weights={task: w}`` sets the weight of every function of ``task``;
      ``task_weights={task: {fn_name: w}}`` sets single functions (others keep 1.0). A function shared by
      tasks must get the same weight from each of them, else ``ValueError`` (a weight belongs to a
      function column in TRL, so it cannot differ per sample).
    - ``task_rewards=router`` with ``all_functions=[fn, ...]``: ``router(sample) -> [fn, ...]`` is called
      once per sample by each wrapped function, with ``sample = {"prompt", "completion",
      "completion_ids", <every per-sample column>}``; it must return a non-empty subset of
      ``all_functions`` (the fixed list TRL needs up front). Wrapped names are the plain function names,
      weights are all 1.0 (use TRL's ``reward_weights``); ``task_weights`` is not accepted. The router
      must be deterministic.

    Inner functions receive the routed subset: ``prompts``, ``completions``, ``completion_ids`` and every
    keyword argument that is a list with one entry per completion are sliced to the routed samples; other
    keyword arguments (``trainer_state``, ``log_metric``, ``step``, ...) pass through unchanged, and
    ``log_extra`` is wrapped so that values logged for the subset land in the right rows (``None``
    elsewhere). A function with no routed sample in a batch is not called.

    Args:
        task_rewards: ``{task: [reward function, ...]}`` or a routing callable.
        task_column: dataset column holding the task label (a ``str`` per sample).
        task_weights: per-task weights (dict form only).
        all_functions: every function the router may return (router form only; required there).

    Returns:
        ``(reward_functions, reward_weights)``, one entry per distinct inner function, ready for
        ``GRPOTrainer(reward_funcs=...)`` and to multiply into ``GRPOConfig.reward_weights``.
    """
    if not isinstance(task_column, str) or not task_column:
        raise ValueError(f"route_rewards: task_column must be a non-empty string, got {task_column!r}.")
    if isinstance(task_rewards, Mapping):
        if all_functions is not None:
            raise ValueError(
                "route_rewards: all_functions is only for a routing callable; with a dict the functions "
                "are the dict's values."
            )
        return _route_by_task_dict(task_rewards, task_column, task_weights)
    if callable(task_rewards):
        if task_weights is not None:
            raise ValueError(
                "route_rewards: task_weights needs task_rewards as a dict {task: [functions]}; with a "
                "routing callable set the weights through GRPOConfig.reward_weights."
            )
        if all_functions is None:
            raise ValueError(
                "route_rewards: a routing callable needs all_functions=[...], every reward function it "
                "may return (TRL needs the list of reward functions before training)."
            )
        return _route_by_router(task_rewards, task_column, all_functions)
    raise TypeError(
        "route_rewards: task_rewards must be a dict {task: [reward functions]} or a routing callable, "
        f"got {type(task_rewards).__name__}."
    )


def _check_reward_function(function: Any, where: str) -> None:
    """Reject what a routed wrapper cannot call: non-callables, model rewards, async functions."""
    if isinstance(function, nn.Module):
        raise TypeError(
            f"route_rewards: {where} holds a model ({type(function).__name__}); wrap reward models with "
            "grpo_custom.reward_model.RewardModelReward to route them."
        )
    if not callable(function):
        raise TypeError(f"route_rewards: {where} holds {function!r}, which is not callable.")
    if is_async_callable(function):
        raise TypeError(
            f"route_rewards: {where} holds the async function {get_callable_name(function)!r}; routed "
            "reward functions must be synchronous."
        )


def _route_by_task_dict(
    task_rewards: Mapping[str, Sequence[RewardFunction]],
    task_column: str,
    task_weights: Mapping[str, float | Mapping[str, float]] | None,
) -> tuple[list[RewardFunction], list[float]]:
    """The dict form of :func:`route_rewards`."""
    if not task_rewards:
        raise ValueError("route_rewards: task_rewards is empty; give at least one task with its functions.")
    owners: dict[int, tuple[RewardFunction, list[str]]] = {}  # id(fn) -> (fn, tasks), first-seen order
    for task, functions in task_rewards.items():
        if not isinstance(task, str) or not task:
            raise ValueError(f"route_rewards: task names must be non-empty strings, got {task!r}.")
        if isinstance(functions, (str, bytes)) or not isinstance(functions, Sequence):
            raise TypeError(
                f"route_rewards: task {task!r} must map to a list of reward functions, "
                f"got {type(functions).__name__}."
            )
        if len(functions) == 0:
            raise ValueError(f"route_rewards: task {task!r} has no reward functions.")
        for function in functions:
            _check_reward_function(function, f"task {task!r}")
            _, tasks = owners.setdefault(id(function), (function, []))
            if task in tasks:
                raise ValueError(f"route_rewards: task {task!r} lists {get_callable_name(function)!r} twice.")
            tasks.append(task)

    weight_of = _task_weight_lookup(task_rewards, task_weights)
    known_tasks = tuple(task_rewards)
    wrapped: list[RewardFunction] = []
    weights: list[float] = []
    for function, tasks in owners.values():
        function_name = get_callable_name(function)
        task_weight = {task: weight_of(task, function_name) for task in tasks}
        if len(set(task_weight.values())) > 1:
            raise ValueError(
                f"route_rewards: {function_name!r} is shared by tasks {tasks} but gets different weights "
                f"{task_weight}; give it the same weight in every task or use separate functions."
            )
        name = f"{tasks[0]}/{function_name}" if len(tasks) == 1 else function_name
        selector = _TaskSelector(frozenset(tasks), known_tasks, task_column)
        wrapped.append(RoutedRewardFunction(function, name, selector))
        weights.append(task_weight[tasks[0]])
    _check_unique_names(wrapped)
    return wrapped, weights


def _task_weight_lookup(
    task_rewards: Mapping[str, Sequence[RewardFunction]],
    task_weights: Mapping[str, float | Mapping[str, float]] | None,
) -> Callable[[str, str], float]:
    """Validate ``task_weights`` and return ``weight(task, function_name)`` (1.0 where unset)."""
    task_weights = {} if task_weights is None else task_weights
    if not isinstance(task_weights, Mapping):
        raise TypeError(f"route_rewards: task_weights must be a dict, got {type(task_weights).__name__}.")
    for task, weight in task_weights.items():
        if task not in task_rewards:
            raise ValueError(
                f"route_rewards: task_weights names task {task!r}, which task_rewards does not have; "
                f"tasks: {list(task_rewards)}."
            )
        if isinstance(weight, Mapping):
            function_names = {get_callable_name(function) for function in task_rewards[task]}
            for function_name, function_weight in weight.items():
                if function_name not in function_names:
                    raise ValueError(
                        f"route_rewards: task_weights[{task!r}] names function {function_name!r}, which "
                        f"task {task!r} does not have; its functions: {sorted(function_names)}."
                    )
                _check_weight(function_weight, f"task_weights[{task!r}][{function_name!r}]")
        else:
            _check_weight(weight, f"task_weights[{task!r}]")

    def weight(task: str, function_name: str) -> float:
        task_weight = task_weights.get(task, 1.0)
        if isinstance(task_weight, Mapping):
            return float(task_weight.get(function_name, 1.0))
        return float(task_weight)

    return weight


def _check_weight(value: Any, where: str) -> None:
    """A weight is a finite real number (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"route_rewards: {where} must be a finite number, got {value!r}.")


def _route_by_router(
    router: Router, task_column: str, all_functions: Sequence[RewardFunction]
) -> tuple[list[RewardFunction], list[float]]:
    """The routing-callable form of :func:`route_rewards`."""
    if isinstance(all_functions, (str, bytes)) or not isinstance(all_functions, Sequence) or not all_functions:
        raise ValueError("route_rewards: all_functions must be a non-empty list of reward functions.")
    for function in all_functions:
        _check_reward_function(function, "all_functions")
    if len({id(function) for function in all_functions}) != len(all_functions):
        raise ValueError("route_rewards: all_functions lists a function twice.")
    wrapped: list[RewardFunction] = [
        RoutedRewardFunction(
            function, get_callable_name(function), _RouterSelector(router, function, all_functions, task_column)
        )
        for function in all_functions
    ]
    _check_unique_names(wrapped)
    return wrapped, [1.0] * len(wrapped)


def _check_unique_names(wrapped: Sequence[RewardFunction]) -> None:
    """TRL logs ``rewards/<name>/...``: two wrapped functions with one name would mix their metrics."""
    seen: set[str] = set()
    for function in wrapped:
        if function.__name__ in seen:
            raise ValueError(
                f"route_rewards: two reward functions are both named {function.__name__!r}; give them "
                "distinct __name__s (lambdas all share '<lambda>')."
            )
        seen.add(function.__name__)


def _is_per_sample(value: Any, num_samples: int) -> bool:
    """A keyword argument is per-sample when it is a list with one entry per completion."""
    return isinstance(value, list) and len(value) == num_samples


def _task_labels(kwargs: Mapping[str, Any], task_column: str, num_samples: int, who: str) -> list:
    """The per-sample task labels from TRL's reward kwargs, validated."""
    if task_column not in kwargs:
        raise TaskRoutingError(
            f"{who}: the reward kwargs have no task column {task_column!r}; available kwargs: {sorted(kwargs)}."
        )
    labels = kwargs[task_column]
    if not _is_per_sample(labels, num_samples):
        raise TaskRoutingError(
            f"{who}: kwargs[{task_column!r}] must be a list with one label per completion "
            f"({num_samples}), got {labels!r:.200}."
        )
    return labels


class _TaskSelector:
    """Selects the samples whose task label is one of ``tasks``; unknown labels are errors."""

    def __init__(self, tasks: frozenset[str], known_tasks: tuple[str, ...], task_column: str):
        self.tasks = tasks
        self.known_tasks = known_tasks
        self.task_column = task_column

    def __call__(self, samples: list[dict], kwargs: Mapping[str, Any], who: str) -> list[int]:
        labels = _task_labels(kwargs, self.task_column, len(samples), who)
        for index, label in enumerate(labels):
            if label not in self.known_tasks:
                raise TaskRoutingError(
                    f"{who}: sample {index} has task {label!r}, which route_rewards was not given; "
                    f"known tasks: {list(self.known_tasks)}."
                )
        return [index for index, label in enumerate(labels) if label in self.tasks]


class _RouterSelector:
    """Selects the samples for which ``router(sample)`` returns ``function``."""

    def __init__(
        self, router: Router, function: RewardFunction, all_functions: Sequence[RewardFunction], task_column: str
    ):
        self.router = router
        self.function = function
        self.all_ids = {id(candidate) for candidate in all_functions}
        self.task_column = task_column

    def __call__(self, samples: list[dict], kwargs: Mapping[str, Any], who: str) -> list[int]:
        selected = []
        for index, sample in enumerate(samples):
            routed = self.router(sample)
            task = sample.get(self.task_column)
            if isinstance(routed, (str, bytes)) or not isinstance(routed, Sequence):
                raise TaskRoutingError(
                    f"{who}: the router returned {type(routed).__name__} for sample {index} (task {task!r}); "
                    "it must return a list of reward functions."
                )
            if len(routed) == 0:
                raise TaskRoutingError(
                    f"{who}: the router returned no reward functions for sample {index} (task {task!r})."
                )
            for candidate in routed:
                if id(candidate) not in self.all_ids:
                    raise TaskRoutingError(
                        f"{who}: the router returned {get_callable_name(candidate)!r} for sample {index} "
                        f"(task {task!r}), which is not in all_functions."
                    )
            if any(candidate is self.function for candidate in routed):
                selected.append(index)
        return selected


class RoutedRewardFunction:
    """A TRL reward function that calls ``function`` on the samples ``selector`` picks, ``None`` elsewhere.

    Built by :func:`route_rewards`; see there for the slicing rules.

    Args:
        function: the inner reward function, TRL signature.
        name: the name TRL logs it under (``__name__``).
        selector: ``selector(samples, kwargs, who) -> [sample index, ...]``.
    """

    def __init__(
        self, function: RewardFunction, name: str, selector: Callable[[list[dict], Mapping[str, Any], str], list[int]]
    ):
        self.function = function
        self.selector = selector
        self.__name__ = name

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None, **kwargs: Any) -> list:
        """Score the routed subset; one value (or ``None``) per completion."""
        num_samples = len(completions)
        if len(prompts) != num_samples:
            raise ValueError(f"{self.__name__}: got {len(prompts)} prompts for {num_samples} completions.")
        samples = [
            {
                "prompt": prompts[index],
                "completion": completions[index],
                "completion_ids": None if completion_ids is None else completion_ids[index],
                **{key: value[index] for key, value in kwargs.items() if _is_per_sample(value, num_samples)},
            }
            for index in range(num_samples)
        ]
        indices = self.selector(samples, kwargs, self.__name__)
        rewards: list = [None] * num_samples
        if not indices:
            return rewards
        sub_kwargs = {
            key: [value[index] for index in indices] if _is_per_sample(value, num_samples) else value
            for key, value in kwargs.items()
        }
        if callable(kwargs.get("log_extra")):
            sub_kwargs["log_extra"] = _scattering_log_extra(kwargs["log_extra"], indices, num_samples, self.__name__)
        values = list(
            self.function(
                prompts=[prompts[index] for index in indices],
                completions=[completions[index] for index in indices],
                completion_ids=None if completion_ids is None else [completion_ids[index] for index in indices],
                **sub_kwargs,
            )
        )
        if len(values) != len(indices):
            raise ValueError(
                f"{self.__name__}: the reward function returned {len(values)} rewards for the "
                f"{len(indices)} samples routed to it."
            )
        for index, value in zip(indices, values):
            rewards[index] = value
        return rewards


def _scattering_log_extra(
    log_extra: Callable[[str, list], None], indices: list[int], num_samples: int, who: str
) -> Callable[[str, list], None]:
    """Wrap TRL's ``log_extra(column, values)`` so subset values land in their full-batch rows."""

    def log_extra_routed(column: str, values: list) -> None:
        if len(values) != len(indices):
            raise ValueError(
                f"{who}: log_extra({column!r}, ...) got {len(values)} values for the {len(indices)} routed samples."
            )
        full: list = [None] * num_samples
        for index, value in zip(indices, values):
            full[index] = value
        log_extra(column, full)

    return log_extra_routed


# ----------------------------------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------------------------------


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
        """Fold the non-NaN entries of ``values`` (any shape) into the statistics."""
        values = values.detach().reshape(-1).to(torch.float64)
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


def _check_batch(rewards: torch.Tensor, tasks: Sequence[str], num_generations: int, who: str) -> None:
    """Shared input checks: rewards [N], one str task per completion, N divisible by G."""
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1:
        raise ValueError(
            f"{who}: rewards must be a 1-D tensor [N], got {getattr(rewards, 'shape', type(rewards).__name__)}."
        )
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"{who}: num_generations must be a positive int, got {num_generations!r}.")
    if len(tasks) != rewards.numel():
        raise ValueError(f"{who}: got {len(tasks)} task labels for {rewards.numel()} rewards.")
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"{who}: {rewards.numel()} rewards do not split into groups of num_generations={num_generations}."
        )
    for index, task in enumerate(tasks):
        if not isinstance(task, str):
            raise TypeError(f"{who}: sample {index} has task label {task!r}; labels must be strings.")


def _group_tasks(tasks: Sequence[str], num_generations: int, who: str) -> list[str]:
    """The task of each group of G consecutive completions; a group mixing tasks is an error."""
    group_tasks = []
    for group in range(len(tasks) // num_generations):
        labels = tasks[group * num_generations : (group + 1) * num_generations]
        if len(set(labels)) != 1:
            raise ValueError(f"{who}: group {group} mixes tasks {sorted(set(labels))}; a group must share one task.")
        group_tasks.append(labels[0])
    return group_tasks


def _nanstd_zero_below_two(values: torch.Tensor, dim: int) -> torch.Tensor:
    """NaN-ignoring Bessel std along ``dim`` (keepdim), 0 where fewer than two values are present."""
    present = ~torch.isnan(values)
    count = present.sum(dim=dim, keepdim=True)
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    squared = torch.where(present, (values - mean) ** 2, torch.zeros_like(values))
    variance = squared.sum(dim=dim, keepdim=True) / (count - 1).clamp(min=1)
    return torch.where(count > 1, variance.sqrt(), torch.zeros_like(variance))


class TaskNormalizer:
    """Per-task reward normalization, applied to the summed rewards right before the advantage estimator.

    - ``mode=None``: identity.
    - ``mode="group"``: r̂ = (r − nanmean_g) / (nanstd_g + eps) within each group g of G consecutive
      completions (Bessel std, 0 for a group with fewer than two non-NaN rewards); every group must
      hold one task, which is checked.
    - ``mode="running"``: r̂ = (r − μ_task) / (σ_task + eps) with per-task :class:`RunningMoments`
      (exact over all rewards seen, or exponential with ``momentum``), updated with this batch's
      rewards of the task first, then applied.

    NaN rewards are ignored by the statistics and stay NaN. Computed in float64, returned in the input
    dtype. :meth:`state_dict` / :meth:`load_state_dict` carry the running statistics (JSON-ready).

    Args:
        mode: ``None``, ``"group"`` or ``"running"``.
        momentum: EMA weight for ``"running"`` (``None``: exact statistics); not allowed otherwise.
        eps: added to the std.
    """

    MODES = (None, "group", "running")

    def __init__(self, mode: str | None = None, momentum: float | None = None, eps: float = 1e-4):
        if mode not in self.MODES:
            raise ValueError(f"TaskNormalizer: mode must be one of {list(self.MODES)}, got {mode!r}.")
        if momentum is not None and mode != "running":
            raise ValueError(f"TaskNormalizer: momentum applies to mode='running' only, got mode={mode!r}.")
        _check_momentum(momentum, "TaskNormalizer")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"TaskNormalizer: eps must be a positive finite number, got {eps!r}.")
        self.mode = mode
        self.momentum = None if momentum is None else float(momentum)
        self.eps = float(eps)
        self.moments: dict[str, RunningMoments] = {}

    def normalize(self, rewards: torch.Tensor, tasks: Sequence[str], num_generations: int) -> torch.Tensor:
        """Normalize ``rewards`` [N] (N = prompts × G, TRL layout) given one task label per completion."""
        _check_batch(rewards, tasks, num_generations, "TaskNormalizer.normalize")
        if self.mode is None:
            return rewards
        values = rewards.to(torch.float64)
        if self.mode == "group":
            _group_tasks(tasks, num_generations, "TaskNormalizer.normalize")
            grouped = values.view(-1, num_generations)  # [num_prompts, G]
            mean = torch.nanmean(grouped, dim=1, keepdim=True)  # [num_prompts, 1]
            normalized = (grouped - mean) / (_nanstd_zero_below_two(grouped, dim=1) + self.eps)
            return normalized.view(-1).to(rewards.dtype)
        normalized = values.clone()
        task_of = list(tasks)
        for task in dict.fromkeys(task_of):
            mask = torch.tensor([label == task for label in task_of], device=rewards.device)  # [N]
            moments = self.moments.setdefault(task, RunningMoments(self.momentum))
            moments.update(values[mask])
            normalized[mask] = (values[mask] - moments.mean) / (moments.std + self.eps)
        return normalized.to(rewards.dtype)

    def state_dict(self) -> dict:
        """JSON-serializable state: configuration and per-task running statistics."""
        return {
            "mode": self.mode,
            "momentum": self.momentum,
            "eps": self.eps,
            "tasks": {task: moments.state_dict() for task, moments in self.moments.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; mode, momentum and eps must match this instance."""
        for key in ("mode", "momentum", "eps"):
            if key not in state:
                raise ValueError(f"TaskNormalizer.load_state_dict: state has no {key!r}.")
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"TaskNormalizer.load_state_dict: state has {key}={state[key]!r}, this normalizer "
                    f"{key}={getattr(self, key)!r}."
                )
        moments = {}
        for task, task_state in state.get("tasks", {}).items():
            moments[task] = RunningMoments(self.momentum)
            moments[task].load_state_dict(task_state)
        self.moments = moments


# ----------------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------------


def task_metrics(
    tasks: Sequence[str],
    rewards: torch.Tensor | Sequence[float],
    advantages: torch.Tensor | Sequence[float],
    num_generations: int,
    completion_lengths: torch.Tensor | Sequence[float],
) -> dict[str, float]:
    """Per-task statistics of one batch, keyed ``tasks/<task>/<metric>``.

    For each task t (first-seen order), over its completions:
    ``reward_mean`` = nanmean r; ``reward_std`` = nanstd r (Bessel, TRL's ``nanstd``);
    ``frac_reward_zero_std`` = share of t's groups with ``torch.isclose(nanstd(group), 0)`` (TRL's test;
    every group counts as zero-std when G = 1, as in TRL); ``advantage_mean`` = mean advantage;
    ``count`` = number of completions; ``completion_length`` = mean completion length.

    Args:
        tasks: one task label per completion, [N].
        rewards: summed rewards [N] (NaN for unscorable completions).
        advantages: advantages [N].
        num_generations: G; groups are consecutive blocks of G and must share a task.
        completion_lengths: completion lengths in tokens [N].
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu()
    advantages = torch.as_tensor(advantages, dtype=torch.float64).detach().cpu()
    lengths = torch.as_tensor(completion_lengths, dtype=torch.float64).detach().cpu()
    _check_batch(rewards, tasks, num_generations, "task_metrics")
    for name, values in (("advantages", advantages), ("completion_lengths", lengths)):
        if values.shape != rewards.shape:
            raise ValueError(f"task_metrics: {name} has shape {tuple(values.shape)}, rewards {tuple(rewards.shape)}.")
    group_tasks = _group_tasks(tasks, num_generations, "task_metrics")
    if num_generations > 1:
        group_std = nanstd(rewards.view(-1, num_generations), dim=1)  # [num_prompts]
    else:
        group_std = torch.zeros(len(group_tasks), dtype=torch.float64)
    group_zero_std = torch.isclose(group_std, torch.zeros_like(group_std))  # [num_prompts]

    metrics: dict[str, float] = {}
    for task in dict.fromkeys(tasks):
        mask = torch.tensor([label == task for label in tasks])  # [N]
        groups = torch.tensor([label == task for label in group_tasks])  # [num_prompts]
        prefix = f"tasks/{task}/"
        metrics[prefix + "reward_mean"] = torch.nanmean(rewards[mask]).item()
        metrics[prefix + "reward_std"] = nanstd(rewards[mask]).item()
        metrics[prefix + "frac_reward_zero_std"] = group_zero_std[groups].double().mean().item()
        metrics[prefix + "advantage_mean"] = advantages[mask].mean().item()
        metrics[prefix + "count"] = float(mask.sum().item())
        metrics[prefix + "completion_length"] = lengths[mask].mean().item()
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Dataset audit and balanced sampling
# ----------------------------------------------------------------------------------------------------------------------


def _read_task_labels(dataset: Any, task_column: str, who: str) -> list[str | None]:
    """Task labels of a ``datasets.Dataset`` or a list of dicts; ``None`` for a missing/None label."""
    if hasattr(dataset, "column_names") and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        if task_column not in dataset.column_names:
            raise ValueError(
                f"{who}: the dataset has no column {task_column!r}; columns: {list(dataset.column_names)}."
            )
        labels = list(dataset[task_column])
    elif isinstance(dataset, Sequence) and all(isinstance(row, Mapping) for row in dataset):
        if not any(task_column in row for row in dataset):
            keys = sorted(dataset[0]) if len(dataset) else []
            raise ValueError(f"{who}: no row has a {task_column!r} column; first row's keys: {keys}.")
        labels = [row.get(task_column) for row in dataset]
    else:
        raise TypeError(f"{who}: dataset must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}.")
    if not labels:
        raise ValueError(f"{who}: the dataset is empty.")
    for index, label in enumerate(labels):
        if label is not None and not isinstance(label, str):
            raise TypeError(
                f"{who}: row {index} has task label {label!r} ({type(label).__name__}); labels must be strings."
            )
    return labels


@dataclass
class TaskAudit:
    """The task mix of a dataset (see :func:`audit_tasks`).

    Attributes:
        counts: rows per task, largest first.
        shares: each task's share of the labelled rows.
        imbalance_ratio: largest count / smallest count.
        unlabelled: rows with a missing or ``None`` label.
        warnings: human-readable problems found.
    """

    counts: dict[str, int]
    shares: dict[str, float]
    imbalance_ratio: float
    unlabelled: int = 0
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        width = max([len("task")] + [len(task) for task in self.counts])
        lines = [f"{'task':<{width}}  {'count':>7}  {'share':>6}"]
        lines += [f"{task:<{width}}  {count:>7}  {self.shares[task]:>6.1%}" for task, count in self.counts.items()]
        lines.append(f"imbalance ratio (max/min count): {self.imbalance_ratio:.2f}")
        if self.unlabelled:
            lines.append(f"unlabelled rows: {self.unlabelled}")
        lines += [f"warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def audit_tasks(
    dataset: Any, task_column: str = "task", min_share: float = 0.05, max_imbalance: float = 10.0
) -> TaskAudit:
    """Count the tasks of a dataset and warn about a mix that per-task training handles badly.

    Warnings: a task with share < ``min_share`` of the labelled rows; imbalance ratio (max/min count)
    > ``max_imbalance``; rows with a missing or ``None`` label. A dataset without the column, an empty
    one, or one with no labelled row raises ``ValueError``.

    Args:
        dataset: a ``datasets.Dataset`` or a list of dicts.
        task_column: column holding the task label.
        min_share: smallest share before a warning.
        max_imbalance: largest imbalance ratio before a warning.
    """
    labels = _read_task_labels(dataset, task_column, "audit_tasks")
    unlabelled_rows = [index for index, label in enumerate(labels) if label is None]
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        raise ValueError(f"audit_tasks: no row has a {task_column!r} label.")
    counts = dict(sorted(counts.items(), key=lambda item: -item[1]))
    labelled = sum(counts.values())
    shares = {task: count / labelled for task, count in counts.items()}
    imbalance_ratio = max(counts.values()) / min(counts.values())

    warnings = [
        f"task {task!r} has {counts[task]} rows, {share:.1%} of the labelled rows (below {min_share:.1%})"
        for task, share in shares.items()
        if share < min_share
    ]
    if imbalance_ratio > max_imbalance:
        warnings.append(
            f"imbalance ratio {imbalance_ratio:.1f} (largest/smallest task count) exceeds {max_imbalance:g}"
        )
    if unlabelled_rows:
        warnings.append(
            f"{len(unlabelled_rows)} rows have no {task_column!r} label (missing or None), "
            f"e.g. rows {unlabelled_rows[:5]}"
        )
    return TaskAudit(counts, shares, imbalance_ratio, len(unlabelled_rows), warnings)


class TaskBalancedSampler(Sampler[int]):
    """TRL ``RepeatSampler`` layout with task-balanced prompt choice.

    Layout (as ``trl.trainer.utils.RepeatSampler(mini_repeat_count=G, batch_size=B, repeat_count=R)``):
    the prompt stream is cut into chunks of B prompts; each chunk is emitted R times, and within it each
    prompt index G times consecutively, so every group of G completions shares one prompt.

    Prompt choice: the task of each prompt follows consecutive random permutations of the task list
    (every task exactly once per cycle, so over any run task counts differ by at most one); within a
    task, prompts are taken from a random permutation of its rows, reshuffled when used up (small tasks
    are oversampled, large ones undersampled; no prompt repeats before all of its task's prompts were
    used). Each ``__iter__`` continues one seeded generator, so runs are reproducible and successive
    epochs differ.

    Args:
        dataset: a ``datasets.Dataset`` or a list of dicts; every row needs a string task label.
        task_column: column holding the task label.
        num_generations: G, copies of each prompt (TRL's ``mini_repeat_count``).
        batch_size: B, distinct prompts per chunk (TRL: ``generation_batch_size // num_generations``).
        repeat_count: R, times each chunk is emitted (TRL: ``num_iterations * steps_per_generation``).
        seed: generator seed.
        num_batches: chunks per epoch; default ``len(dataset) // batch_size`` (TRL's epoch length).
    """

    def __init__(
        self,
        dataset: Any,
        task_column: str,
        num_generations: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        seed: int = 0,
        num_batches: int | None = None,
    ):
        super().__init__()
        for option, value in (
            ("num_generations", num_generations),
            ("batch_size", batch_size),
            ("repeat_count", repeat_count),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TaskBalancedSampler: {option} must be a positive int, got {value!r}.")
        labels = _read_task_labels(dataset, task_column, "TaskBalancedSampler")
        self.rows_by_task: dict[str, list[int]] = {}
        for index, label in enumerate(labels):
            if label is None:
                raise ValueError(f"TaskBalancedSampler: row {index} has no {task_column!r} label (missing or None).")
            self.rows_by_task.setdefault(label, []).append(index)
        if num_batches is None:
            num_batches = len(labels) // batch_size
            if num_batches == 0:
                raise ValueError(
                    f"TaskBalancedSampler: the dataset has {len(labels)} rows, fewer than batch_size={batch_size}."
                )
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"TaskBalancedSampler: num_batches must be a positive int, got {num_batches!r}.")
        self.tasks = list(self.rows_by_task)
        self.num_generations = num_generations
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_batches = num_batches
        self.generator = torch.Generator().manual_seed(seed)

    def _shuffled(self, items: list) -> list:
        """A random permutation of ``items`` from this sampler's generator."""
        return [items[position] for position in torch.randperm(len(items), generator=self.generator).tolist()]

    def _prompt_indices(self) -> list[int]:
        """``num_batches × batch_size`` prompt indices, task-balanced."""
        num_prompts = self.num_batches * self.batch_size
        task_sequence: list[str] = []
        while len(task_sequence) < num_prompts:
            task_sequence += self._shuffled(self.tasks)
        pools: dict[str, list[int]] = {task: [] for task in self.tasks}
        prompts = []
        for task in task_sequence[:num_prompts]:
            if not pools[task]:
                pools[task] = self._shuffled(self.rows_by_task[task])
            prompts.append(pools[task].pop())
        return prompts

    def __iter__(self) -> Iterator[int]:
        """One epoch of dataset indices in RepeatSampler's layout."""
        prompts = self._prompt_indices()
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.num_generations):
                        yield index

    def __len__(self) -> int:
        """Indices per epoch: num_batches × batch_size × num_generations × repeat_count."""
        return self.num_batches * self.batch_size * self.num_generations * self.repeat_count
