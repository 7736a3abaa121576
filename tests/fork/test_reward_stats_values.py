"""Reward quantiles and stage summaries read ``rewards_per_func`` through the guard's classification (issue 21,
part 3, follow-up): NaN and ±inf are unscored, left out of q10/q50/q90 and the summary, and counted in nan_count."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grpo_custom.fork.hooks.reward_stats import record_reward_distribution, write_stage_summary


def _trainer(output_dir):
    """The attributes the reward-stats hook reads, for one stage "warm" that started at step 0."""
    extras = SimpleNamespace(step_context={"stage": "warm"}, stage_rewards=None,
                             reward_schedule=SimpleNamespace(stages=[SimpleNamespace(name="warm")]),
                             curriculum=SimpleNamespace(start_of=lambda stage: 0))
    return SimpleNamespace(reward_func_names=["judge", "rm"], _metrics={"train": defaultdict(list)},
                           state=SimpleNamespace(global_step=0), callback_handler=SimpleNamespace(callbacks=[]),
                           grpo_custom=extras, args=SimpleNamespace(should_save=True, output_dir=str(output_dir)))


def test_non_finite_scores_are_unscored_in_quantiles_and_stage_summaries(tmp_path):
    judge = [0.1, math.nan, 0.4, 0.9, 0.3, 0.7]  # NaN: the judge could not score sample 1
    rm = [1.0, -2.0, math.inf, 0.5, -math.inf, 3.0]  # ±inf: an overflowed reward-model score
    trainer = _trainer(tmp_path)
    record_reward_distribution(trainer, "train", torch.tensor([judge, rm], dtype=torch.float32).T)  # [6, 2]
    metrics = trainer._metrics["train"]
    finite = {"judge": np.array([0.1, 0.4, 0.9, 0.3, 0.7], dtype=np.float32),
              "rm": np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)}
    for name, values in finite.items():
        for key, p in (("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
            assert metrics[f"rewards/{name}/{key}"] == [pytest.approx(np.quantile(values, p), rel=1e-6)], (name, key)
    summary = json.loads(open(write_stage_summary(trainer, final=True)).read())["reward_functions"]
    for name, values in finite.items():
        assert summary[name]["count"] == len(values)
        assert summary[name]["nan_count"] == 6 - len(values)
        assert summary[name]["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert summary[name]["std"] == pytest.approx(values.std(ddof=1), rel=1e-6)
        assert (summary[name]["min"], summary[name]["max"]) == pytest.approx((values.min(), values.max()))
