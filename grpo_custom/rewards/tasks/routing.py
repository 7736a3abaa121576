"""Route reward functions to the samples of their task(s): :func:`route_rewards` and the TRL reward
functions it builds (each scores its own task's completions, ``None`` for the others)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from torch import nn
from trl.trainer.utils import get_callable_name, is_async_callable

from grpo_custom.rewards.guard import describe_reward_value, reward_values

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
    elsewhere). A function with no routed sample in a batch is not called. Its output is read as the guard reads
    one (:func:`~grpo_custom.rewards.guard.reward_values`: a list, tuple or 1-D array/tensor; a dict, a string or a
    generator is an error, not reinterpreted) and its values are passed on unconverted: the trainer's guard
    around the routed function classifies each of them at its index in the full batch.

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
            "grpo_custom.rewards.reward_model.RewardModelReward to route them."
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
        output = self.function(
            prompts=[prompts[index] for index in indices],
            completions=[completions[index] for index in indices],
            completion_ids=None if completion_ids is None else [completion_ids[index] for index in indices],
            **sub_kwargs,
        )
        values = reward_values(output)
        if values is None:
            raise ValueError(
                f"{self.__name__}: the reward function returned {describe_reward_value(output)} for the "
                f"{len(indices)} samples routed to it; it must return a list (or 1-D array) with one value per sample."
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

