"""The critic learns: on the demo's length task its explained variance rises above a measured bound (issue 22 part 7).

The run is ``grpo-custom demo --estimator gae``'s (its tiny LoRA model, prompts, length reward ``-|8 - len|``,
policy learning rate and batch: one prompt × 8 completions per step, ``build_demo_trainer``) with two changes:

- the discount γ = 0.9 (the ``gae`` estimator's option). With the demo's γ = 1 and an outcome reward the return of
  every token of a completion is its final reward, and within a one-prompt batch that varies with tokens not yet
  sampled (when the end-of-text comes, which bytes merge into one UTF-8 character): nothing the head reads predicts
  it. Measured on 100-step demo runs (seeds 0, 1) and a 60-step one with the policy frozen: a least-squares fit of
  R on exactly the head's features (layer-normed last hidden state, time), trained on the previous 20 batches,
  reaches a held-out explained variance of -0.06 … 0.00 (median over batches), on the time alone 0.00 … +0.05;
  with the number of characters decoded so far added as a feature, +0.34 on the frozen policy. So with γ = 1 no head on these features can show learning. With γ = 0.9 the
  return of token t is 0.9^(L-1-t)·r: mostly a function of the time left, which the head reads (its time feature).
- the head's learning rate 0.03 (the demo's is 0.01), so that 40 steps give a clear signal.

Measured (40 steps, explained variance ``value/explained_variance`` of V_old against this batch's returns, before
the head trains on it, i.e. on a batch the head has not seen; mean over the last 10 steps; this CPU):

============================================  ==============================================
run                                            last-10 mean, seeds 0, 1, 2, 3, 4
============================================  ==============================================
the head                                       0.744, 0.721, 0.750, 0.676, 0.685 (first 10: 0.12-0.14)
the head with lr 1e-12 (it never learns)       0.000, 0.000, 0.000 (seeds 0-2; V = μ_R is constant)
the head before the fix (time read at 1/√D)    0.063, 0.063, 0.051 (seeds 0-2)
============================================  ==============================================

The bound, :data:`BOUND` = 0.4, is 0.28 below the lowest seed of the learning head (0.676; the five seeds
spread by 0.07, so a CPU whose round-off changes the samples still lands far above it) and 0.34 above the
head before the fix, 0.4 above one that does not learn. The first 10 steps of every learning run average
0.12-0.14, so the rise is the learning, not a property of the task.
"""
from __future__ import annotations

import math

import torch

from grpo_custom.cli.demo import build_demo_trainer
from grpo_custom.value.head import ValueHead

STEPS = 40
WINDOW = 10
HEAD_LR = 0.03
GAMMA = 0.9
BOUND = 0.4


def explained_variance_curve(output_dir, seed: int, head_lr: float) -> list[float]:
    """``value/explained_variance`` of every step of the demo's run, γ = :data:`GAMMA`, the head's lr ``head_lr``."""
    trainer = build_demo_trainer(str(output_dir), STEPS, "gae", seed=seed,
                                 advantage_estimator_kwargs={"lam": 0.95, "gamma": GAMMA},
                                 value_function={"kind": "head", "lr": head_lr})
    trainer.train()
    curve = [entry["value/explained_variance"] for entry in trainer.state.log_history
             if "value/explained_variance" in entry]  # a batch with constant returns logs none (it is undefined)
    assert len(curve) >= STEPS - WINDOW and all(math.isfinite(value) for value in curve)
    return curve


def window_mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_the_head_learns_the_demo_length_task(tmp_path):
    curve = explained_variance_curve(tmp_path, seed=0, head_lr=HEAD_LR)
    first, last = window_mean(curve[:WINDOW]), window_mean(curve[-WINDOW:])
    assert last > BOUND, f"explained variance of the last {WINDOW} steps {last:.3f} <= {BOUND} (first: {first:.3f})"
    assert last > first + 0.3


def test_a_head_that_does_not_learn_stays_below_the_bound(tmp_path):
    """The control: the same run with a head learning rate of 1e-12 (the option must be > 0) never moves the head,
    V stays the running mean of the returns, the explained variance 0: the bound separates learning from none."""
    curve = explained_variance_curve(tmp_path, seed=0, head_lr=1e-12)
    assert window_mean(curve[-WINDOW:]) < BOUND - 0.3
    assert max(abs(value) for value in curve) < 1e-3


def test_the_head_reads_the_time_as_its_own_block():
    """V = μ_R + σ_R·(wᵀx/√D + w_τ·(2·t/T_max − 1) + b), computed independently from the weights: the time weight
    is not divided by √D, so one unit of w_τ moves V by σ_R over the completion whatever the hidden size."""
    torch.manual_seed(0)
    head = ValueHead(hidden_size=16, num_inputs=2, time_feature=True)
    with torch.no_grad():
        head.linear.weight.normal_()
        head.linear.bias.fill_(0.3)
    head.update_return_stats(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.ones(2, 2))
    hidden = [torch.randn(3, 5, 16, dtype=torch.float64),
              torch.randn(3, 5, 16, dtype=torch.bfloat16)]  # any dtype
    time = torch.arange(5, dtype=torch.float32).expand(3, 5) / 8
    got = head(hidden, time)

    normed = []
    for h in hidden:
        h = h.double()
        normed.append((h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5))
    weight = head.linear.weight.detach().double()[0]
    readout = torch.cat(normed, -1) @ weight[:32] / math.sqrt(32) + weight[32] * (2 * time.double() - 1) + 0.3
    mean, std = 4.0, math.sqrt(5.0)  # the returns 1, 3, 5, 7
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), mean + std * readout, rtol=1e-5, atol=1e-5)
