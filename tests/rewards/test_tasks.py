"""Tests for grpo_custom.rewards.tasks: routing, per-task normalization, metrics, audit, balanced sampling."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.trainer.utils import RepeatSampler

from grpo_custom.rewards.tasks import (
    RunningMoments,
    TaskAudit,
    TaskBalancedSampler,
    TaskNormalizer,
    audit_tasks,
    route_rewards,
    task_metrics,
)

EPS = 1e-4


class Recorder:
    """A reward function that records what it received and scores a completion by its length."""

    def __init__(self, name: str, offset: float = 0.0):
        self.__name__ = name
        self.offset = offset
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, completion_ids=None, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **kwargs})
        return [len(completion) + self.offset for completion in completions]


def trl_call(function, tasks, completions, **extra):
    """Call a reward function the way TRL's _calculate_rewards does (keyword arguments, columns as lists)."""
    prompts = [f"p{index}" for index in range(len(completions))]
    completion_ids = [[index] for index in range(len(completions))]
    return function(prompts=prompts, completions=completions, completion_ids=completion_ids, task=tasks, **extra)


TASKS = ["math", "math", "code", "code", "math", "code"]
COMPLETIONS = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]


def make_routing():
    accuracy, fmt, executes = Recorder("accuracy"), Recorder("fmt", offset=100.0), Recorder("executes", offset=10.0)
    functions, weights = route_rewards(
        {"math": [accuracy, fmt], "code": [executes, fmt]},
        task_weights={"math": {"accuracy": 2.0}, "code": {"executes": 0.5}},
    )
    return (accuracy, fmt, executes), functions, weights


# ---------------------------------------------------------------- routing


def test_each_sample_reaches_exactly_its_tasks_functions():
    (accuracy, fmt, executes), functions, weights = make_routing()
    assert [function.__name__ for function in functions] == ["math/accuracy", "fmt", "code/executes"]
    assert weights == [2.0, 1.0, 0.5]
    state = object()
    answers = [f"answer{index}" for index in range(6)]
    outputs = [trl_call(function, TASKS, COMPLETIONS, answer=answers, trainer_state=state) for function in functions]

    assert len(accuracy.calls) == len(fmt.calls) == len(executes.calls) == 1
    assert accuracy.calls[0]["completions"] == ["a", "bb", "eeeee"]
    assert accuracy.calls[0]["prompts"] == ["p0", "p1", "p4"]
    assert accuracy.calls[0]["completion_ids"] == [[0], [1], [4]]
    assert accuracy.calls[0]["answer"] == ["answer0", "answer1", "answer4"]
    assert accuracy.calls[0]["task"] == ["math"] * 3
    assert accuracy.calls[0]["trainer_state"] is state  # non-per-sample kwargs pass through
    assert executes.calls[0]["completions"] == ["ccc", "dddd", "ffffff"]
    assert fmt.calls[0]["completions"] == COMPLETIONS  # shared by both tasks: every sample

    assert outputs[0] == [1, 2, None, None, 5, None]
    assert outputs[1] == [101, 102, 103, 104, 105, 106]
    assert outputs[2] == [None, None, 13, 14, None, 16]


def test_routed_rewards_sum_per_task_under_trl_nan_aggregation():
    _, functions, weights = make_routing()
    outputs = [trl_call(function, TASKS, COMPLETIONS) for function in functions]
    # TRL: None -> NaN, then nansum over functions of weight * reward
    rewards_per_func = torch.tensor([[math.nan if v is None else v for v in column] for column in outputs]).T
    total = (rewards_per_func * torch.tensor(weights)).nansum(dim=1)
    expected = [
        2.0 * 1 + 101,
        2.0 * 2 + 102,
        0.5 * 13 + 103,
        0.5 * 14 + 104,
        2.0 * 5 + 105,
        0.5 * 16 + 106,
    ]
    assert total.tolist() == pytest.approx(expected)


def test_function_without_routed_samples_is_not_called():
    (accuracy, _, _), functions, _ = make_routing()
    assert trl_call(functions[0], ["code", "code"], ["x", "y"]) == [None, None]
    assert accuracy.calls == []


def test_task_weight_applies_to_all_functions_of_the_task():
    a, b = Recorder("a"), Recorder("b")
    _, weights = route_rewards({"t1": [a], "t2": [b]}, task_weights={"t1": 3.0})
    assert weights == [3.0, 1.0]


def test_log_extra_values_are_scattered_to_their_rows():
    logged = {}

    def tagged(prompts, completions, log_extra, **kwargs):
        log_extra("tag", [f"tag:{completion}" for completion in completions])
        return [0.0] * len(completions)

    functions, _ = route_rewards({"math": [tagged], "code": [Recorder("other")]})
    trl_call(functions[0], TASKS, COMPLETIONS, log_extra=lambda column, values: logged.update({column: values}))
    assert logged["tag"] == ["tag:a", "tag:bb", None, None, "tag:eeeee", None]


def test_router_callable_routes_per_sample():
    short, long_, always = Recorder("short"), Recorder("long"), Recorder("always")

    def router(sample):
        return [short, always] if len(sample["completion"]) <= 2 else [long_, always]

    functions, weights = route_rewards(router, all_functions=[short, long_, always])
    assert [function.__name__ for function in functions] == ["short", "long", "always"]
    assert weights == [1.0, 1.0, 1.0]
    outputs = [trl_call(function, TASKS, COMPLETIONS) for function in functions]
    assert short.calls[0]["completions"] == ["a", "bb"]
    assert long_.calls[0]["completions"] == ["ccc", "dddd", "eeeee", "ffffff"]
    assert outputs[0] == [1, 2, None, None, None, None]
    assert outputs[2] == [1, 2, 3, 4, 5, 6]


def test_unknown_task_names_task_and_sample_index():
    _, functions, _ = make_routing()
    with pytest.raises(ValueError, match=r"sample 2 has task 'poetry'.*known tasks: \['math', 'code'\]"):
        trl_call(functions[0], ["math", "math", "poetry"], ["a", "b", "c"])


def test_task_without_functions_is_rejected():
    with pytest.raises(ValueError, match="task 'code' has no reward functions"):
        route_rewards({"math": [Recorder("a")], "code": []})


def test_missing_task_column_names_column_and_lists_kwargs():
    functions, _ = route_rewards({"math": [Recorder("a")]}, task_column="domain")
    with pytest.raises(ValueError, match=r"no task column 'domain'; available kwargs: \['answer', 'task'\]"):
        trl_call(functions[0], ["math"], ["a"], answer=["x"])


def test_router_errors_name_sample_index_and_task():
    a, b = Recorder("a"), Recorder("b")
    empty, _ = route_rewards(lambda sample: [] if sample["task"] == "code" else [a], all_functions=[a])
    with pytest.raises(ValueError, match=r"no reward functions for sample 2 \(task 'code'\)"):
        trl_call(empty[0], TASKS, COMPLETIONS)
    stray, _ = route_rewards(lambda sample: [b], all_functions=[a])
    with pytest.raises(ValueError, match=r"returned 'b' for sample 0 \(task 'math'\), which is not in all_functions"):
        trl_call(stray[0], TASKS, COMPLETIONS)
    with pytest.raises(ValueError, match="needs all_functions"):
        route_rewards(lambda sample: [a])


def test_shared_function_with_conflicting_weights_is_rejected():
    fmt = Recorder("fmt")
    with pytest.raises(ValueError, match=r"'fmt' is shared by tasks \['math', 'code'\] but gets different weights"):
        route_rewards({"math": [Recorder("a"), fmt], "code": [fmt]}, task_weights={"math": 2.0})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task_weights": {"poetry": 1.0}}, "task_weights names task 'poetry'"),
        ({"task_weights": {"math": {"nope": 1.0}}}, r"task_weights\['math'\] names function 'nope'"),
        ({"task_weights": {"math": float("nan")}}, r"task_weights\['math'\] must be a finite number"),
        ({"all_functions": []}, "all_functions is only for a routing callable"),
    ],
)
def test_invalid_weights_and_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        route_rewards({"math": [Recorder("a")]}, **kwargs)


def test_invalid_functions_are_rejected():
    async def async_reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(TypeError, match="async function 'async_reward'"):
        route_rewards({"math": [async_reward]})
    with pytest.raises(TypeError, match="RewardModelReward"):
        route_rewards({"math": [torch.nn.Linear(1, 1)]})
    with pytest.raises(ValueError, match="both named 'a'"):
        route_rewards(lambda sample: [], all_functions=[Recorder("a"), Recorder("a")])


def test_wrong_number_of_rewards_is_an_error():
    functions, _ = route_rewards({"math": [lambda prompts, completions, **kwargs: [1.0]]})
    with pytest.raises(ValueError, match="returned 1 rewards for the 3 samples routed"):
        trl_call(functions[0], ["math"] * 3, ["a", "b", "c"])


# ---------------------------------------------------------------- normalization


def test_identity_mode_returns_rewards_unchanged():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(TaskNormalizer().normalize(rewards, ["a"] * 4, 2), rewards)


def test_group_mode_by_hand():
    rewards = torch.tensor(
        [1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 1.0, math.nan, 3.0, 5.0, math.nan, math.nan], dtype=torch.float64
    )
    tasks = ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    out = TaskNormalizer("group").normalize(rewards, tasks, 3)
    root2 = math.sqrt(2.0)
    expected = [
        -1 / (1 + EPS),
        0.0,
        1 / (1 + EPS),
        0.0,
        0.0,
        0.0,
        -1 / (root2 + EPS),
        math.nan,
        1 / (root2 + EPS),
        0.0,
        math.nan,
        math.nan,
    ]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), equal_nan=True)


def test_group_mode_rejects_a_group_with_two_tasks():
    with pytest.raises(ValueError, match=r"group 1 mixes tasks \['a', 'b'\]"):
        TaskNormalizer("group").normalize(torch.zeros(4), ["a", "a", "a", "b"], 2)


def test_running_mode_exact_by_hand():
    normalizer = TaskNormalizer("running")
    out1 = normalizer.normalize(torch.tensor([1.0, 3.0, 10.0, 20.0], dtype=torch.float64), ["a", "a", "b", "b"], 2)
    root2, root50 = math.sqrt(2.0), math.sqrt(50.0)
    torch.testing.assert_close(
        out1,
        torch.tensor(
            [-1 / (root2 + EPS), 1 / (root2 + EPS), -5 / (root50 + EPS), 5 / (root50 + EPS)], dtype=torch.float64
        ),
    )
    # a has now seen 1, 3, 5, nan: mean 3, std 2 (Bessel); the batch updates the stats before it is applied
    out2 = normalizer.normalize(torch.tensor([5.0, math.nan], dtype=torch.float64), ["a", "a"], 2)
    torch.testing.assert_close(out2, torch.tensor([2 / (2 + EPS), math.nan], dtype=torch.float64), equal_nan=True)
    assert normalizer.moments["a"].count == 3
    assert normalizer.moments["b"].count == 2


def test_running_mode_exponential_by_hand():
    normalizer = TaskNormalizer("running", momentum=0.25)
    normalizer.normalize(torch.tensor([1.0, 3.0], dtype=torch.float64), ["a", "a"], 2)  # sets mean 2, var 2
    out = normalizer.normalize(torch.tensor([5.0, 9.0], dtype=torch.float64), ["a", "a"], 2)  # batch mean 7, var 8
    # mean = 0.75·2 + 0.25·7 = 3.25, var = 0.75·2 + 0.25·8 = 3.5
    root = math.sqrt(3.5)
    torch.testing.assert_close(out, torch.tensor([1.75 / (root + EPS), 5.75 / (root + EPS)], dtype=torch.float64))


def test_running_state_round_trip_through_json_is_exact():
    torch.manual_seed(0)
    tasks = ["a", "a", "b", "b", "c", "c"]
    original = TaskNormalizer("running")
    for _ in range(3):
        original.normalize(torch.randn(6) * 3 + 1, tasks, 2)
    restored = TaskNormalizer("running")
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.moments["b"].count == 6
    batch = torch.randn(6)
    assert torch.equal(original.normalize(batch, tasks, 2), restored.normalize(batch, tasks, 2))
    assert original.state_dict() == restored.state_dict()


def test_load_state_dict_rejects_other_configuration():
    state = TaskNormalizer("running", momentum=0.1).state_dict()
    with pytest.raises(ValueError, match="momentum=0.1"):
        TaskNormalizer("running").load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "zscore"}, "mode must be one of"),
        ({"mode": "group", "momentum": 0.1}, "momentum applies to mode='running' only"),
        ({"mode": "running", "momentum": 0.0}, r"momentum must be None or a number in \(0, 1\]"),
        ({"mode": "running", "momentum": 1.5}, r"momentum must be None or a number in \(0, 1\]"),
        ({"mode": "group", "eps": 0.0}, "eps must be a positive finite number"),
    ],
)
def test_invalid_normalizer_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskNormalizer(**kwargs)


def test_invalid_batches():
    normalizer = TaskNormalizer("group")
    with pytest.raises(ValueError, match="got 3 task labels for 4 rewards"):
        normalizer.normalize(torch.zeros(4), ["a"] * 3, 2)
    with pytest.raises(ValueError, match="do not split into groups of num_generations=3"):
        normalizer.normalize(torch.zeros(4), ["a"] * 4, 3)
    with pytest.raises(TypeError, match="sample 1 has task label 7"):
        normalizer.normalize(torch.zeros(2), ["a", 7], 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6), min_size=1, max_size=6))
def test_exact_running_moments_match_statistics_over_all_values(batches):
    moments = RunningMoments()
    for batch in batches:
        moments.update(torch.tensor(batch, dtype=torch.float64))
    values = [value for batch in batches for value in batch]
    assert moments.count == len(values)
    assert moments.mean == pytest.approx(statistics.fmean(values), abs=1e-9, rel=1e-9)
    expected_std = statistics.stdev(values) if len(values) > 1 else 0.0
    assert moments.std == pytest.approx(expected_std, abs=1e-7, rel=1e-7)


# ---------------------------------------------------------------- metrics


def test_task_metrics_match_independent_computation():
    tasks = ["a", "a", "b", "b", "a", "a"]
    rewards = [1.0, 1.0, 2.0, 4.0, 3.0, math.nan]
    advantages = [0.0, 0.0, -0.7, 0.7, 0.5, 0.0]
    lengths = [10, 20, 30, 50, 40, 60]
    metrics = task_metrics(tasks, torch.tensor(rewards), torch.tensor(advantages), 2, torch.tensor(lengths))
    expected = {
        "tasks/a/reward_mean": statistics.fmean([1.0, 1.0, 3.0]),
        "tasks/a/reward_std": statistics.stdev([1.0, 1.0, 3.0]),
        "tasks/a/frac_reward_zero_std": 0.5,  # group [1, 1] has std 0; group [3, nan] has an undefined std
        "tasks/a/advantage_mean": statistics.fmean([0.0, 0.0, 0.5, 0.0]),
        "tasks/a/count": 4.0,
        "tasks/a/completion_length": statistics.fmean([10, 20, 40, 60]),
        "tasks/b/reward_mean": 3.0,
        "tasks/b/reward_std": statistics.stdev([2.0, 4.0]),
        "tasks/b/frac_reward_zero_std": 0.0,
        "tasks/b/advantage_mean": 0.0,
        "tasks/b/count": 2.0,
        "tasks/b/completion_length": 40.0,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_task_metrics_single_generation_counts_every_group_as_zero_std():
    metrics = task_metrics(["a", "a"], [1.0, 2.0], [0.0, 0.0], 1, [3, 4])
    assert metrics["tasks/a/frac_reward_zero_std"] == 1.0


def test_task_metrics_validates_shapes_and_groups():
    with pytest.raises(ValueError, match=r"advantages has shape \(3,\), rewards \(4,\)"):
        task_metrics(["a"] * 4, [0.0] * 4, [0.0] * 3, 2, [1] * 4)
    with pytest.raises(ValueError, match="group 0 mixes tasks"):
        task_metrics(["a", "b"], [0.0] * 2, [0.0] * 2, 2, [1] * 2)


# ---------------------------------------------------------------- audit


def test_audit_counts_ratio_and_warnings():
    rows = [{"task": "math"}] * 60 + [{"task": "code"}] * 2 + [{"task": None}, {"prompt": "no label"}]
    audit = audit_tasks(rows, "task")
    assert isinstance(audit, TaskAudit)
    assert audit.counts == {"math": 60, "code": 2}
    assert audit.shares == pytest.approx({"math": 60 / 62, "code": 2 / 62})
    assert audit.imbalance_ratio == 30.0
    assert audit.unlabelled == 2
    assert len(audit.warnings) == 3
    assert "task 'code' has 2 rows, 3.2%" in audit.warnings[0]
    assert "imbalance ratio 30.0" in audit.warnings[1]
    assert "2 rows have no 'task' label" in audit.warnings[2] and "[62, 63]" in audit.warnings[2]
    table = str(audit)
    assert "math" in table and "60" in table and "96.8%" in table and "warning:" in table


def test_audit_of_a_balanced_dataset_has_no_warnings():
    import datasets

    dataset = datasets.Dataset.from_list([{"task": task} for task in ["a", "b", "c"] * 5])
    audit = audit_tasks(dataset, "task")
    assert audit.counts == {"a": 5, "b": 5, "c": 5}
    assert audit.imbalance_ratio == 1.0
    assert audit.warnings == []


def test_audit_errors():
    with pytest.raises(ValueError, match=r"no row has a 'task' column; first row's keys: \['prompt'\]"):
        audit_tasks([{"prompt": "x"}], "task")
    import datasets

    with pytest.raises(ValueError, match=r"no column 'task'; columns: \['prompt'\]"):
        audit_tasks(datasets.Dataset.from_list([{"prompt": "x"}]), "task")
    with pytest.raises(TypeError, match="row 1 has task label 3"):
        audit_tasks([{"task": "a"}, {"task": 3}], "task")


# ---------------------------------------------------------------- balanced sampler


def unbalanced_rows():
    return [{"task": "big"}] * 30 + [{"task": "mid"}] * 5 + [{"task": "tiny"}]


def layout(prompts, G, B, R):
    """TRL RepeatSampler's layout of a prompt stream: chunks of B prompts, emitted R times, each prompt G times."""
    out = []
    for start in range(0, len(prompts), B):
        out += [index for _ in range(R) for index in prompts[start : start + B] for _ in range(G)]
    return out


def chunk_prompts(sequence, G, B, R):
    """The prompt stream behind a sampled sequence: the first emission of each chunk, one entry per group."""
    return [index for start in range(0, len(sequence), B * G * R) for index in sequence[start : start + B * G : G]]


@pytest.mark.parametrize("G, B, R", [(3, 4, 2), (2, 1, 1), (4, 3, 3)])
def test_balanced_sampler_has_trl_repeat_sampler_layout(G, B, R):
    rows = unbalanced_rows()
    trl = list(RepeatSampler(rows, mini_repeat_count=G, batch_size=B, repeat_count=R, seed=1))
    assert trl == layout(chunk_prompts(trl, G, B, R), G, B, R)  # the reference layout is TRL's
    sampler = TaskBalancedSampler(rows, "task", num_generations=G, batch_size=B, repeat_count=R, seed=1)
    ours = list(sampler)
    assert len(ours) == len(sampler) == len(trl)
    prompts = chunk_prompts(ours, G, B, R)
    assert len(prompts) == (len(rows) // B) * B
    assert ours == layout(prompts, G, B, R)  # groups intact: G consecutive copies; chunks repeated R times


def test_balanced_sampler_balances_tasks():
    rows = unbalanced_rows()
    sampler = TaskBalancedSampler(rows, "task", num_generations=2, batch_size=4, seed=0, num_batches=300)
    prompts = list(sampler)[::2]
    counts = {task: sum(rows[index]["task"] == task for index in prompts) for task in ("big", "mid", "tiny")}
    assert sum(counts.values()) == 1200
    assert all(abs(count - 400) <= 1 for count in counts.values()), counts
    # TRL's uniform sampler gives "tiny" ~1/36 of the prompts; ours gives it 1/3
    mid_picks = [index for index in prompts if rows[index]["task"] == "mid"]
    assert sorted(mid_picks[:5]) == [30, 31, 32, 33, 34]  # a task's prompts all appear before one repeats


def test_balanced_sampler_is_deterministic_for_a_seed():
    rows = unbalanced_rows()
    first = list(TaskBalancedSampler(rows, "task", num_generations=2, batch_size=3, seed=5))
    second = list(TaskBalancedSampler(rows, "task", num_generations=2, batch_size=3, seed=5))
    other = list(TaskBalancedSampler(rows, "task", num_generations=2, batch_size=3, seed=6))
    assert first == second
    assert first != other


def test_balanced_sampler_errors():
    with pytest.raises(ValueError, match="row 1 has no 'task' label"):
        TaskBalancedSampler([{"task": "a"}, {"task": None}], "task", num_generations=2)
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        TaskBalancedSampler([{"task": "a"}] * 3, "task", num_generations=2, batch_size=4)
    with pytest.raises(ValueError, match="num_generations must be a positive int"):
        TaskBalancedSampler([{"task": "a"}], "task", num_generations=0)
