"""Peak memory and time of Unsloth's chunked GRPO loss with and without grpo-custom's regularizers.

One measurement is the forward + backward of the loss Unsloth's generated trainer computes from
the policy's last hidden states h [B, T, H] (requires grad) and a frozen output head W [V, H]:

- per-token log-probs from the chunked hidden-state log-softmax (no [B, T, V] tensor is built;
  chunks = B · 4, Unsloth's default multiplier for T ≤ 16k);
- ``UnslothEfficientGRPO.apply`` (loss_type "dapo"), with grpo-custom's log-prob terms passed in
  its kwargs under ``grpo_custom.unsloth.loss_terms.TERMS_KEY`` exactly as the trainer passes them;
- ``loss.backward()``.

Variants: ``base``; ``kl k3``; ``kl k3 (k2 grad)`` (k3 value, k2 straight-through gradient);
``entropy`` (log-probs and entropies from grpo-custom's one-pass chunked kernel,
``grpo_custom.unsloth.entropy_kernel``, and ``UnslothGRPOEntropyBonus`` with grpo-custom's loss-type weights:
what a patched trainer runs for an entropy regularizer at these shapes with ``entropy_kernel="auto"``;
the report states that decision); ``entropy (recompute)`` (Unsloth's recomputing kernel with
``return_entropy=True``: what runs with ``entropy_kernel="recompute"`` and where Unsloth's own log-prob
path offloads); ``base (recompute logps)`` (that recomputing kernel without entropy: its like-for-like
reference); ``naive entropy`` (full logits h @ Wᵀ → log_softmax → entropy and log-probs, plain autograd);
``value head (head)`` / ``value head (shared_head)``: the base loss plus a value function's value head on the same
h and its clipped value loss (docs/value_function.md). The ``adapter`` kind runs a second decoder forward + backward
outside this loss, so it is not measured here: ``benchmarks/bench_value.py`` measures every kind at the trainer level.

Targets: entropy ≤ 1.1× the peak memory and ≤ 1.3× the time of ``base``; the detached value head ≤ 1.05× / 1.15×,
the shared one ≤ 1.10× / 1.25×; at V = 151936 the naive
entropy ≥ 4× the peak memory of ``entropy``. The script prints a markdown report and exits 0
whatever the verdicts (it is a benchmark; the verdicts are in the report).

    python benchmarks/bench_loss.py [--device auto|cpu|cuda] [--smoke] [--repeats K] [--output PATH]
                                    [--batch B] [--tokens T] [--hidden H] [--vocab V [V ...]]

On CPU, Unsloth's GPU code path runs with ``UNSLOTH_ALLOW_CPU=1`` (set here before Unsloth is
imported) and torch.compile off. A full run writes ``benchmarks/RESULTS_loss_<device>.md``.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

VOCAB_SIZES = (32000, 151936)
SIZES = {  # (batch B, completion tokens T, hidden H)
    "smoke": (8, 8, 64),
    "cpu": (4, 96, 256),
    "cuda": (8, 1024, 4096),
}
DEFAULT_REPEATS = {"smoke": 1, "cpu": 3, "cuda": 5}
ENTROPY_COEF = 0.01
KL_COEF = 0.05
MEMORY_TARGET = 1.1  # entropy peak memory / base
TIME_TARGET = 1.3  # entropy median time / base
NAIVE_TARGET = 4.0  # naive entropy peak memory / entropy, at the largest vocabulary
NAIVE_TARGET_VOCAB = 151936
POLICY_TIME_TARGET = 1.05  # each policy loss (grpo-custom's term beside Unsloth's) median time / base (ppo_clip)
POLICY_MEMORY_TARGET = 1.01  # ... peak memory / base
POLICY_PAIRED_REPEATS = {"smoke": 3, "cpu": 15, "cuda": 20}
VALUE_TARGETS = {"head": (1.05, 1.15), "shared_head": (1.10, 1.25)}  # value head kind: (peak memory, time) / base
VALUE_COEF = 0.1
RESULTS_DIR = Path(__file__).resolve().parent
MIB = 1024.0 * 1024.0


def configure_unsloth_environment(device: str, work_dir: str) -> None:
    """Set the environment Unsloth reads at import: its GPU path on CPU when ``device`` is "cpu".

    Must run before ``unsloth`` is imported; raises RuntimeError if it already was on a CPU run
    without ``UNSLOTH_ALLOW_CPU=1`` (Unsloth would not have loaded its GPU path).
    """
    if device == "cpu":
        if "unsloth" in sys.modules and os.environ.get("UNSLOTH_ALLOW_CPU") != "1":
            raise RuntimeError("bench_loss: unsloth was imported before UNSLOTH_ALLOW_CPU=1 could be set; "
                               "run the benchmark in a fresh interpreter.")
        os.environ["UNSLOTH_ALLOW_CPU"] = "1"
        os.environ.setdefault("UNSLOTH_COMPILE_DISABLE", "1")
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # same math as compiled, much faster on CPU
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", os.path.join(work_dir, "unsloth_compiled"))
    os.environ.setdefault("GRPO_CUSTOM_CACHE_DIR", os.path.join(work_dir, "fork_cache"))
    os.environ.setdefault("UNSLOTH_GRPO_SEQ_PACKING", "0")
    os.environ.setdefault("UNSLOTH_GRPO_PREFIX_GROUPER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError as error:
        raise RuntimeError(f"bench_loss: CPU peak memory needs Linux with glibc (libc.so.6): {error}") from error


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> None:
    """Fix glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (fixed values end its dynamic adjustment).

    Measuring: 256 KiB / 128 KiB, so every tensor ≥ 256 KiB is its own mapping, unmapped when freed.
    Set it before torch is imported: blocks freed into the heap earlier would be reused by later
    tensors and stay resident, which blurs the peak. Timing: 32 MiB / 64 MiB, the steady state
    glibc's dynamic thresholds reach with tensors this large.
    """
    libc = _glibc()
    m_trim_threshold, m_mmap_threshold = -1, -3
    if libc.mallopt(m_mmap_threshold, mmap_bytes) != 1 or libc.mallopt(m_trim_threshold, trim_bytes) != 1:
        raise RuntimeError(f"bench_loss: glibc mallopt refused mmap threshold {mmap_bytes}, trim {trim_bytes}.")


MEASURING_MALLOC = (256 * 1024, 128 * 1024)
TIMING_MALLOC = (32 * 1024 * 1024, 64 * 1024 * 1024)


class CpuPeakMemory:
    """Peak resident memory of this process since :meth:`reset`, in bytes (Linux, glibc).

    The kernel's peak-RSS mark (VmHWM) is reset to the current RSS by writing 5 to
    /proc/self/clear_refs; the peak is VmHWM minus the RSS at reset. ``malloc_trim`` runs before
    each reset; with :data:`MEASURING_MALLOC` thresholds set (see :func:`set_malloc_thresholds`)
    every variant then starts from the same resident baseline in one process.
    """

    method = ("CPU, in one process: peak RSS increase (VmHWM − VmRSS) during one forward + backward over the RSS "
              "after inputs are allocated; the peak is reset per variant via /proc/self/clear_refs, glibc's mmap "
              "threshold is fixed at 256 KiB from the start (freed tensors leave RSS at once) and malloc_trim runs "
              "before each reset; the timing runs come after all memory runs, with glibc's steady-state thresholds "
              "(mmap 32 MiB, trim 64 MiB); W and h are in the baseline, h.grad is in the peak")

    def __init__(self):
        if not sys.platform.startswith("linux"):
            raise RuntimeError(f"bench_loss: CPU peak memory needs Linux /proc, not {sys.platform!r}.")
        self._libc = _glibc()
        self._baseline = 0

    @staticmethod
    def _status_bytes(field: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"bench_loss: /proc/self/status has no {field} line.")

    def reset(self) -> None:
        """Free what can be freed, then start a new peak from the current RSS."""
        gc.collect()
        self._libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        self._baseline = self._status_bytes("VmRSS")

    def peak(self) -> int:
        """Bytes of the highest RSS since :meth:`reset`, above the RSS at reset."""
        return self._status_bytes("VmHWM") - self._baseline


class CudaPeakMemory:
    """Peak CUDA memory allocated since :meth:`reset`, above what was allocated at reset, in bytes."""

    method = ("CUDA: torch.cuda.max_memory_allocated − memory_allocated after inputs are allocated, during one "
              "forward + backward (reset_peak_memory_stats per variant); W and h are in the baseline, h.grad is in "
              "the peak")

    def __init__(self):
        import torch

        self._torch = torch
        self._baseline = 0

    def reset(self) -> None:
        """Free cached blocks, then start a new peak from the memory allocated now."""
        gc.collect()
        self._torch.cuda.synchronize()
        self._torch.cuda.empty_cache()
        self._torch.cuda.reset_peak_memory_stats()
        self._baseline = self._torch.cuda.memory_allocated()

    def peak(self) -> int:
        """Bytes of the highest allocation since :meth:`reset`, above the allocation at reset."""
        self._torch.cuda.synchronize()
        return self._torch.cuda.max_memory_allocated() - self._baseline


@dataclass
class LossProblem:
    """Inputs of one vocabulary size, shaped as Unsloth's ``grpo_accumulated_loss`` receives them.

    Args:
        hidden: h [B, T, H], leaf, requires grad.
        lm_head: W [V, H], frozen.
        ids: completion token ids [B, T].
        mask: completion mask [B, T] (float; every row has padding at its end).
        advantages: [B].
        ref_logps: reference log-probs [B, T].
        loss_kwargs: the kwargs Unsloth passes to ``grpo_compute_loss``.
        chunks: row chunks of the chunked log-softmax.
    """

    hidden: object
    lm_head: object
    ids: object
    mask: object
    advantages: object
    ref_logps: object
    loss_kwargs: dict
    chunks: int


def make_problem(module, batch: int, tokens: int, hidden_size: int, vocab: int, device: str, seed: int = 0):
    """Random inputs for one vocabulary size (float32 on CPU, bfloat16 h and W on CUDA)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm_head = (torch.randn(vocab, hidden_size, generator=generator) / hidden_size**0.5).to(device, dtype)
    hidden = torch.randn(batch, tokens, hidden_size, generator=generator).to(device, dtype).requires_grad_()
    ids = torch.randint(0, vocab, (batch, tokens), generator=generator).to(device)
    lengths = torch.randint(tokens // 2, tokens + 1, (batch,), generator=generator)
    mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).to(device, torch.float32)  # [B, T]
    advantages = torch.randn(batch, generator=generator).to(device)
    chunks = batch * max(4, tokens // 4096)
    with torch.no_grad():
        logps = module.chunked_hidden_states_selective_log_softmax(hidden, lm_head, ids, chunks)  # [B, T]
    ref_logps = logps + 0.1 * torch.randn(batch, tokens, generator=generator).to(device)  # [B, T]
    loss_kwargs = {"loss_type": "dapo", "num_items_in_batch": mask.sum(), "max_completion_length": tokens,
                   "current_gradient_accumulation_steps": 1, "num_processes": 1,
                   "epsilon_low": 0.2, "epsilon_high": 0.2}
    return LossProblem(hidden, lm_head, ids, mask, advantages, ref_logps, loss_kwargs, chunks)


def build_variants(module, policy_losses: list[str] | None = None) -> dict[str, Callable[[LossProblem], object]]:
    """Name → function returning the scalar loss of one variant (backward is the caller's); ``policy_losses``
    limits the ``policy <name>`` rows to those names (None: every registered one)."""
    import torch
    import unsloth_zoo.rl_replacements as zoo

    from grpo_custom.algorithms.regularizers import RegularizerSpec
    from grpo_custom.unsloth.decisions import token_weights
    from grpo_custom.unsloth.entropy_kernel import chunked_logps_and_entropies
    from grpo_custom.unsloth.loss_terms import TERMS_KEY

    compute_loss = getattr(module.grpo_compute_loss, "grpo_custom_original", module.grpo_compute_loss)
    fused = unsloth_has_fused_linear()
    unfused = {"fused_linear": False} if fused else {}
    kl_k3 = RegularizerSpec.from_config({"name": "kl", "kind": "k3", "coef": KL_COEF})
    kl_k3_k2_grad = RegularizerSpec.from_config({"name": "kl", "kind": "k3", "grad_kind": "k2", "coef": KL_COEF})

    def fast_loss(problem: LossProblem, logps, terms, extra=None):
        kwargs = {**problem.loss_kwargs, TERMS_KEY: terms, **(extra or {})}
        return module.UnslothEfficientGRPO.apply(
            logps, None, problem.ref_logps, None, problem.lm_head, problem.ids, problem.mask, problem.advantages,
            0.0, None, 1, kwargs, None)[0]

    def chunked_logps(problem: LossProblem):
        return module.chunked_hidden_states_selective_log_softmax(problem.hidden, problem.lm_head, problem.ids,
                                                                  problem.chunks)  # [B, T]

    def entropy_weights(problem: LossProblem):
        # the entropy regularizer's term is -H: Σ w·H with w = -coef · loss-type weights
        return -ENTROPY_COEF * token_weights(compute_loss, problem.ids, problem.mask, problem.loss_kwargs)  # [B, T]

    def base(problem):
        return fast_loss(problem, chunked_logps(problem), [])

    def with_kl_k3(problem):
        return fast_loss(problem, chunked_logps(problem), [(kl_k3, torch.tensor(KL_COEF))])

    def with_kl_k3_k2_grad(problem):
        return fast_loss(problem, chunked_logps(problem), [(kl_k3_k2_grad, torch.tensor(KL_COEF))])

    def base_recompute(problem):
        logps = zoo.chunked_hidden_states_selective_log_softmax_recompute(
            problem.hidden, problem.lm_head, problem.ids, chunks=problem.chunks, **unfused)  # [B, T]
        return fast_loss(problem, logps, [])

    def base_chunked_scorer(problem):
        logps = module.chunked_hidden_states_selective_log_softmax(problem.hidden, problem.lm_head, problem.ids,
                                                                   problem.chunks, fused_linear=False)  # [B, T]
        return fast_loss(problem, logps, [])

    def with_entropy_fused(problem):
        logps, entropies = zoo.chunked_hidden_states_selective_log_softmax_recompute(
            problem.hidden, problem.lm_head, problem.ids, chunks=problem.chunks, return_entropy=True,
            fused_linear=True)  # [B, T] each
        bonus = zoo.UnslothGRPOEntropyBonus.apply(entropies, entropy_weights(problem), 1.0)
        return fast_loss(problem, logps, []) + bonus

    def with_entropy(problem):
        logps, entropies = chunked_logps_and_entropies(problem.hidden, problem.lm_head, problem.ids,
                                                       problem.chunks)  # [B, T] each
        bonus = zoo.UnslothGRPOEntropyBonus.apply(entropies, entropy_weights(problem), 1.0)
        return fast_loss(problem, logps, []) + bonus

    def with_entropy_recompute(problem):
        # outside a trainer's loss call the patched binding runs Unsloth's own kernel
        logps, entropies = zoo.chunked_hidden_states_selective_log_softmax_recompute(
            problem.hidden, problem.lm_head, problem.ids, chunks=problem.chunks, return_entropy=True,
            **unfused)  # [B, T] each
        bonus = zoo.UnslothGRPOEntropyBonus.apply(entropies, entropy_weights(problem), 1.0)
        return fast_loss(problem, logps, []) + bonus

    def naive_entropy(problem):
        logits = (problem.hidden @ problem.lm_head.t()).float()  # [B, T, V]
        log_probs = torch.log_softmax(logits, dim=-1)  # [B, T, V]
        entropies = -(log_probs.exp() * log_probs).sum(-1)  # [B, T]
        logps = log_probs.gather(-1, problem.ids.unsqueeze(-1)).squeeze(-1)  # [B, T]
        return fast_loss(problem, logps, []) + (entropies * entropy_weights(problem)).sum()

    variants = {
        "base": base,
        "kl k3": with_kl_k3,
        "kl k3 (k2 grad)": with_kl_k3_k2_grad,
        "entropy": with_entropy,
        "entropy (recompute)": with_entropy_recompute,
        "base (recompute logps)": base_recompute,
        "naive entropy": naive_entropy,
    }
    if fused:  # unsloth_zoo >= 2026.10.9: its fused-linear kernel scores by default; the chunked scorer on request
        variants["entropy (Unsloth fused-linear)"] = with_entropy_fused
        variants["base (chunked scorer, keeps logits)"] = base_chunked_scorer
    variants.update(policy_variants(module, fast_loss, chunked_logps, policy_losses))
    variants.update(value_variants(fast_loss, chunked_logps))
    return variants


def value_variants(fast_loss, chunked_logps) -> dict[str, Callable[[LossProblem], object]]:
    """``value head (<kind>)``: the base loss plus what a trainer with ``value_function={"kind": kind}`` adds to it
    (grpo_custom.value.loss_term): the value head on the same last hidden states h (detached for ``head``), the
    clipped value loss (dapo aggregation), as ``L_V − sg(L_V)`` (``head``) or, for ``shared_head``, the value
    ``coef · L_V`` with the gradient reaching h scaled by coef and the head's unscaled."""
    import torch

    from grpo_custom.algorithms.value_loss import value_loss
    from grpo_custom.value.head import ValueHead

    heads: dict = {}

    def targets(problem: LossProblem):
        key = id(problem)
        if key not in heads:
            generator = torch.Generator(device="cpu").manual_seed(1)
            head = ValueHead(problem.hidden.shape[-1], 1).to(problem.hidden.device)
            torch.nn.init.normal_(head.linear.weight, std=0.02, generator=generator)
            shape = problem.mask.shape
            returns = torch.randn(shape, generator=generator).to(problem.hidden.device)  # [B, T]
            old_values = torch.randn(shape, generator=generator).to(problem.hidden.device)  # [B, T]
            heads[key] = (head, returns, old_values)
        return heads[key]

    def variant(kind):
        def loss(problem):
            head, returns, old_values = targets(problem)
            hidden = problem.hidden
            # head: detached; shared_head: the gradient reaching h scaled by coef (the head's own is not)
            features = hidden.detach() if kind == "head" else hidden.detach() + VALUE_COEF * (hidden - hidden.detach())
            values = head([features])  # [B, T] float32 (no time feature: it adds one input)
            term, _ = value_loss(values, returns, old_values, problem.mask, cliprange_value=0.5, loss_type="dapo",
                                 num_items_in_batch=problem.loss_kwargs["num_items_in_batch"])
            term = term - term.detach() if kind == "head" else term - (1.0 - VALUE_COEF) * term.detach()
            return fast_loss(problem, chunked_logps(problem), []) + term

        return loss

    return {f"value head ({kind})": variant(kind) for kind in VALUE_TARGETS}


def unsloth_has_fused_linear() -> bool:
    """Whether the installed unsloth_zoo scores with its fused-linear kernel (its recompute function takes ``fused_linear``)."""
    import inspect

    import unsloth_zoo.rl_replacements as zoo

    function = zoo.chunked_hidden_states_selective_log_softmax_recompute
    return "fused_linear" in inspect.signature(getattr(function, "grpo_custom_original", function)).parameters


SCORER_LINE = {True: "- Unsloth's scorer: fused-linear kernel (unsloth_zoo >= 2026.10.9; its entropy is the "
                     "`entropy (Unsloth fused-linear)` rows)",
               False: "- Unsloth's scorer: chunked log-softmax (keeps chunk logits; no fused-linear kernel installed)"}
ENTROPY_VARIANTS = ("entropy", "entropy (recompute)", "entropy (Unsloth fused-linear)")


def gradient_errors(variants: dict, problem: LossProblem) -> dict:
    """max |∂L/∂h − reference| / max |reference| of each entropy variant, the naive full-logits entropy as reference."""
    def gradient(loss_fn):
        problem.hidden.grad = None
        loss_fn(problem).backward()
        grad, problem.hidden.grad = problem.hidden.grad.float(), None
        return grad

    reference = gradient(variants["naive entropy"])
    return {name: float((gradient(variants[name]) - reference).abs().max() / reference.abs().max())
            for name in ENTROPY_VARIANTS if name in variants}


def gradient_error_lines(errors: dict) -> list[str]:
    """Markdown table of :func:`gradient_errors` per vocabulary (empty without errors)."""
    if not errors:
        return []
    lines = ["", "Entropy gradient agreement, ∂L/∂hidden vs the naive full-logits entropy (max abs error / max abs):",
             "", "| vocab | variant | ∂h rel. err |", "|---:|---|---:|"]
    for vocab, by_variant in errors.items():
        lines += [f"| {vocab} | {name} | {error:.1e} |" for name, error in by_variant.items()]
    return lines


def policy_variants(module, fast_loss, chunked_logps,
                    names: list[str] | None = None) -> dict[str, Callable[[LossProblem], object]]:
    """``policy <name>`` for every registered policy loss: what a trainer runs with ``policy_loss=<name>`` (Unsloth's
    own term gets zero advantages, grpo-custom's term is added beside it); ``base`` is the default ``ppo_clip``."""
    from grpo_custom.algorithms.policy_losses import build_policy_loss_spec, list_policy_losses
    from grpo_custom.unsloth.policy_term import POLICY_KEY, PolicyStep, _policy_step

    def variant(name):
        spec = build_policy_loss_spec(name, None, {"epsilon_low": 0.2, "epsilon_high": 0.2, "delta": None})
        spec = type(spec)(label=spec.label, function=spec.function, options=spec.options, stock=False)

        def loss(problem):
            token = _policy_step.set(PolicyStep(spec=spec, step=0))
            try:
                return fast_loss(problem, chunked_logps(problem), [], extra={POLICY_KEY: True})
            finally:
                _policy_step.reset(token)

        return loss

    known = list_policy_losses()
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise ValueError(f"bench_loss: unknown policy loss(es) {unknown} in --policy-losses; registered: {known}")
    return {f"policy {name}": variant(name) for name in (known if names is None else names)}


@dataclass
class Measurement:
    """Peak memory (bytes above the inputs) and wall-clock seconds of each timed forward + backward."""

    peak_bytes: int
    seconds: list
    paired_ratio: float | None = None  # policy rows: median (variant / base) time over back-to-back pairs

    @property
    def median_seconds(self) -> float:
        """Median of the timed repeats."""
        return statistics.median(self.seconds)


def forward_backward(loss_fn, problem: LossProblem) -> None:
    """One forward + backward of ``loss_fn``; h.grad is dropped before and after."""
    problem.hidden.grad = None
    loss_fn(problem).backward()
    problem.hidden.grad = None


def time_variant(loss_fn, problem: LossProblem, synchronize, repeats: int) -> list[float]:
    """Seconds of ``repeats`` forward + backward after one warm-up (which settles the allocator for this variant)."""
    forward_backward(loss_fn, problem)
    seconds = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        forward_backward(loss_fn, problem)
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def paired_time_ratio(loss_fn, base_fn, problem: LossProblem, synchronize, repeats: int) -> float:
    """Median of variant / base time over ``repeats`` back-to-back pairs, alternating which runs first.

    Pairs cancel the slow drift of a shared machine that separate medians pick up; used for the policy rows.
    """
    ratios = []
    for index in range(repeats):
        times = {}
        order = (base_fn, loss_fn) if index % 2 == 0 else (loss_fn, base_fn)  # alternate: no first-runner bias
        for fn in order:
            synchronize()
            start = time.perf_counter()
            forward_backward(fn, problem)
            synchronize()
            times[fn] = time.perf_counter() - start
        ratios.append(times[loss_fn] / times[base_fn])
    return statistics.median(ratios)


def peak_memory(loss_fn, problem: LossProblem, meter) -> int:
    """Peak bytes above the inputs during one forward + backward (run it once before)."""
    meter.reset()
    forward_backward(loss_fn, problem)
    return meter.peak()


def target_checks(results: dict) -> list[tuple[int, str, float, str, bool]]:
    """(vocab, check, value, target text, passed) for every target of the issue."""
    checks = []
    for vocab, by_variant in results.items():
        base, entropy = by_variant["base"], by_variant["entropy"]
        memory = entropy.peak_bytes / base.peak_bytes
        checks.append((vocab, "entropy peak memory / base", memory, f"≤ {MEMORY_TARGET}", memory <= MEMORY_TARGET))
        duration = entropy.median_seconds / base.median_seconds
        checks.append((vocab, "entropy time / base", duration, f"≤ {TIME_TARGET}", duration <= TIME_TARGET))
        for name, measured in by_variant.items():
            if name.startswith("policy "):
                memory = measured.peak_bytes / base.peak_bytes
                checks.append((vocab, f"{name} peak memory / base", memory, f"≤ {POLICY_MEMORY_TARGET}",
                               memory <= POLICY_MEMORY_TARGET))
                duration = measured.paired_ratio
                checks.append((vocab, f"{name} time / base (paired)", duration, f"≤ {POLICY_TIME_TARGET}",
                               duration <= POLICY_TIME_TARGET))
        for kind, (memory_target, time_target) in VALUE_TARGETS.items():
            measured = by_variant.get(f"value head ({kind})")
            if measured is not None:
                memory = measured.peak_bytes / base.peak_bytes
                checks.append((vocab, f"value head ({kind}) peak memory / base", memory, f"≤ {memory_target}",
                               memory <= memory_target))
                duration = measured.median_seconds / base.median_seconds
                checks.append((vocab, f"value head ({kind}) time / base", duration, f"≤ {time_target}",
                               duration <= time_target))
        if vocab == NAIVE_TARGET_VOCAB:
            naive = by_variant["naive entropy"].peak_bytes / entropy.peak_bytes
            checks.append((vocab, "naive entropy peak memory / entropy", naive, f"≥ {NAIVE_TARGET}",
                           naive >= NAIVE_TARGET))
    return checks


def machine_header(device: str, sizes: tuple, repeats: int, meter) -> list[str]:
    """Markdown lines naming the machine, library versions, sizes and how memory and time are measured."""
    import torch

    if device == "cuda":
        machine = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        machine = f"CPU {_cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("torch", "trl", "transformers", "unsloth", "unsloth_zoo", "grpo-custom"))
    batch, tokens, hidden_size = sizes
    dtype = "bfloat16 h and W (logits in float32)" if device == "cuda" else "float32"
    return [
        f"- machine: {machine}; {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- versions: {versions}",
        f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')}",
        f"- sizes: B={batch}, T={tokens}, H={hidden_size}, {dtype}; loss_type dapo; log-softmax chunks B·4 = "
        f"{batch * max(4, tokens // 4096)}; regularizer coefs kl {KL_COEF}, entropy {ENTROPY_COEF}",
        f"- memory: {meter.method}",
        f"- time: median of {repeats} forward + backward per variant after 1 warm-up, wall clock"
        + (" (torch.cuda.synchronize around each)" if device == "cuda" else ""),
    ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def format_report(results: dict, header: list[str], title: str) -> str:
    """The markdown report: header, one table row per (vocab, variant), then the target verdicts."""
    lines = [f"# {title}", "", *header, "",
             "| vocab | variant | peak memory (MiB) | memory × base | median time (ms) | time × base |",
             "|---:|---|---:|---:|---:|---:|"]
    for vocab, by_variant in results.items():
        base = by_variant["base"]
        for name, measured in by_variant.items():
            lines.append(f"| {vocab} | {name} | {measured.peak_bytes / MIB:.1f} | "
                         f"{measured.peak_bytes / base.peak_bytes:.2f} | {measured.median_seconds * 1e3:.1f} | "
                         f"{measured.median_seconds / base.median_seconds:.2f} |")
    paired = [(vocab, name, measured) for vocab, by_variant in results.items()
              for name, measured in by_variant.items() if measured.paired_ratio is not None]
    if paired:  # the policy rows' time against base, from alternating back-to-back pairs (paired_time_ratio)
        lines += ["", "| vocab | policy loss (beside Unsloth's loss) | memory × base | paired time × base |",
                  "|---:|---|---:|---:|"]
        lines += [f"| {vocab} | {name} | {measured.peak_bytes / results[vocab]['base'].peak_bytes:.2f} | "
                  f"{measured.paired_ratio:.3f} |" for vocab, name, measured in paired]
    lines += ["", "| vocab | check | value | target | verdict |", "|---:|---|---:|---|---|"]
    for vocab, check, value, target, passed in target_checks(results):
        lines.append(f"| {vocab} | {check} | {value:.2f} | {target} | {'PASS' if passed else 'FAIL'} |")
    lines += ["", "Unsloth's recomputing kernel, like for like: entropy (recompute) / base (recompute logps) = "
              + "; ".join(f"V={vocab}: memory {_ratio(v, 'entropy (recompute)', 'base (recompute logps)', 'peak_bytes')}×,"
                          f" time {_ratio(v, 'entropy (recompute)', 'base (recompute logps)', 'median_seconds')}×"
                          for vocab, v in results.items()) + "."]
    return "\n".join(lines) + "\n"


def _ratio(by_variant: dict, numerator: str, denominator: str, attribute: str) -> str:
    return f"{getattr(by_variant[numerator], attribute) / getattr(by_variant[denominator], attribute):.2f}"


def auto_kernel_line(sizes: tuple, module, device: str, vocab_size: int) -> str:
    """What a patched trainer's ``entropy_kernel="auto"`` picks for one loss call of these sizes at ``vocab_size``,
    with the LM head in this benchmark's dtype on ``device`` (bfloat16 on CUDA, float32 on CPU)."""
    import torch

    from grpo_custom.unsloth.decisions import fused_linear_holds_all_rows, scorer_keeps_logits, small_batch_rule
    from grpo_custom.unsloth.entropy_plan import EntropyKernelPlan, keeps_log_probs

    batch, tokens, hidden_size = sizes
    plan = EntropyKernelPlan(mode="auto", total_rows=batch, multiplier=max(4, tokens // 4096),
                             scorer_keeps_logits=scorer_keeps_logits(),
                             small_batch=small_batch_rule(module.grpo_accumulated_loss))
    logits_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fused_all = fused_linear_holds_all_rows(batch * tokens, hidden_size, vocab_size, torch.device(device))
    kept = keeps_log_probs(plan, rows=batch, width=tokens, chunks=batch * plan.multiplier, logits_dtype=logits_dtype,
                           fused_holds_all_rows=fused_all)
    own = ("fused-linear entropy (the `entropy (Unsloth fused-linear)` rows)"
           if unsloth_has_fused_linear() and not plan.scorer_keeps_logits
           else "recomputing kernel (the `entropy (recompute)` rows)")
    picked = "grpo-custom's one-pass kernel (the `entropy` rows)" if kept else f"Unsloth's {own}"
    return (f"- `entropy_kernel=\"auto\"` in a trainer, for one loss call of {batch} rows × {tokens} tokens at "
            f"V={vocab_size}: {picked}")


def resolve_device(requested: str) -> str:
    """"auto" → "cuda" when CUDA is present, else "cpu"; "cuda" without CUDA raises ValueError."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("bench_loss: --device cuda was requested but torch.cuda.is_available() is False.")
    return requested


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the markdown report (and write it for full runs).

    Returns:
        {"results": {vocab: {variant: Measurement}}, "checks": target_checks(...), "report": markdown}.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes B,T,H = {SIZES['smoke']} (CI)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (median reported)")
    parser.add_argument("--batch", type=int, default=None, help="B (default: the mode's, see SIZES)")
    parser.add_argument("--tokens", type=int, default=None, help="completion tokens T (default: the mode's)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size H (default: the mode's)")
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help=f"vocabulary sizes (default {VOCAB_SIZES})")
    parser.add_argument("--policy-losses", nargs="*", default=None, metavar="NAME",
                        help="policy-loss rows to measure (default: every registered one; none: no policy rows)")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file to write (default: benchmarks/RESULTS_loss_<device>.md; "
                             "--smoke writes none unless given)")
    options = parser.parse_args(argv)
    if options.repeats is not None and options.repeats < 1:
        parser.error(f"--repeats must be ≥ 1, got {options.repeats}")

    on_linux = sys.platform.startswith("linux")
    heap_was_clean = "torch" not in sys.modules
    if on_linux:
        set_malloc_thresholds(*MEASURING_MALLOC)
    device = resolve_device(options.device)
    mode = "smoke" if options.smoke else device
    repeats = options.repeats or DEFAULT_REPEATS[mode]
    sizes = tuple(given if given is not None else default
                  for given, default in zip((options.batch, options.tokens, options.hidden), SIZES[mode]))
    vocab_sizes = tuple(options.vocab or VOCAB_SIZES)
    output = options.output
    if output is None and not options.smoke:
        output = RESULTS_DIR / f"RESULTS_loss_{device}.md"

    with tempfile.TemporaryDirectory(prefix="bench_loss_") as work_dir:
        configure_unsloth_environment(device, work_dir)
        import torch

        import grpo_custom

        if device == "cpu":
            torch.set_num_threads(1)
        module = grpo_custom.patch_unsloth().module
        variants = build_variants(module, options.policy_losses)
        problems = {vocab: make_problem(module, *sizes, vocab, device) for vocab in vocab_sizes}
        meter = CudaPeakMemory() if device == "cuda" else CpuPeakMemory()
        peaks = {}
        for vocab, problem in problems.items():
            for loss_fn in variants.values():  # first calls: lazy initialisation, torch.compile on CUDA
                forward_backward(loss_fn, problem)
            peaks[vocab] = {name: peak_memory(loss_fn, problem, meter) for name, loss_fn in variants.items()}
        if on_linux:
            set_malloc_thresholds(*TIMING_MALLOC)
        synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        results = {vocab: {name: Measurement(peaks[vocab][name], time_variant(loss_fn, problem, synchronize, repeats))
                           for name, loss_fn in variants.items()}
                   for vocab, problem in problems.items()}
        for vocab, problem in problems.items():
            for name, loss_fn in variants.items():
                if name.startswith("policy "):
                    results[vocab][name].paired_ratio = paired_time_ratio(
                        loss_fn, variants["base"], problem, synchronize, POLICY_PAIRED_REPEATS[mode])
        errors = {vocab: gradient_errors(variants, problem) for vocab, problem in problems.items()}
        del problems
        header = machine_header(device, sizes, repeats, meter)
        header += [auto_kernel_line(sizes, module, device, vocab) for vocab in vocab_sizes]
        header.append(SCORER_LINE[unsloth_has_fused_linear()])

    title = f"Unsloth chunked GRPO loss with grpo-custom regularizers: {device.upper()}"
    if options.smoke:
        title += " (smoke sizes)"
    if device == "cpu":
        header.append("- measured on CPU only (Unsloth's GPU path with UNSLOTH_ALLOW_CPU=1, torch.compile off); "
                      "GPU numbers are unmeasured here: run `python benchmarks/bench_loss.py --device cuda`")
    if device == "cpu" and not heap_was_clean:
        header.append("- note: main() ran in a process that had imported torch already; blocks freed into glibc's "
                      "heap before then can add a few MiB to the CPU peaks (run the script itself for clean numbers)")
    report = format_report(results, header, title) + "\n".join(gradient_error_lines(errors)) + "\n"
    print(report)
    if output is not None:
        output.write_text(report)
        print(f"written to {output}")
    return {"results": results, "checks": target_checks(results), "report": report, "gradient_errors": errors}


if __name__ == "__main__":
    main()
