"""``code_execution_reward`` (TRL reward signature) and ``extract_code``: score completions in the sandbox."""
from __future__ import annotations

import dataclasses
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from grpo_custom.rewards.builtin import completion_text, dataset_column
from grpo_custom.rewards.sandbox.limits import MIB, SandboxLimits
from grpo_custom.rewards.sandbox.run import resolve_isolation, run_checked, warn_process_cap, warn_process_level

LANGUAGES = ("python",)


def extract_code(text: str) -> str:
    """The code in a completion: the last ```` ```python ```` (or ```` ```py ````) fenced block of ``text``,
    else the last plain ```` ``` ```` block, else the whole ``text``."""
    for pattern in (r"```(?:python3?|py)[ \t]*\n(.*?)```", r"```[ \t]*\n(.*?)```"):
        blocks = re.findall(pattern, text, flags=re.DOTALL)
        if blocks:
            return blocks[-1]
    return text


def code_execution_reward(
    tests_column: str = "tests",
    timeout: float = 5.0,
    memory_mb: int = 512,
    cpu_seconds: int | None = None,
    max_workers: int | None = None,
    time_budget: float | None = None,
    language: str = "python",
    *,
    isolation: str = "auto",
    disk_mb: int = 64,
    max_processes: int = 1,
    open_files: int = 64,
    output_bytes: int = 1 * MIB,
) -> Callable:
    """Reward ``1.0`` if the completion's code passes its tests in the sandbox, else ``0.0`` (higher is better).

    The code is :func:`extract_code` of the completion; the tests are ``kwargs[tests_column]``
    (a string of Python, or a list of assert strings joined by newlines), judged as in
    :func:`run_in_sandbox`. Samples run in parallel (``max_workers`` threads, default
    ``min(4, batch size)``). With ``time_budget`` seconds for the whole batch, a sample's timeout is
    cut to the time left and samples not started in time score ``0.0`` with reason ``"time budget"``.
    A sample with empty tests scores ``None`` (cannot score) with reason ``"no tests"``.

    ``isolation``: "auto" (default) and "os" check here, once, that this machine gives OS isolation
    and raise :class:`SandboxUnavailableError` (saying why, and how to opt in to "process") if not;
    "process" runs plain subprocesses and logs a warning on every call.

    The reward function keeps the per-sample reasons of its last call in ``last_reasons`` and
    logs them as the completions-table column ``code_reason`` through ``log_extra`` when given.

    Args:
        tests_column: dataset column with the tests.
        timeout, memory_mb, cpu_seconds, disk_mb, max_processes, open_files, output_bytes: per-sample
            limits (see :class:`SandboxLimits` for the defaults).
        max_workers: parallel sandboxes.
        time_budget: total seconds for one batch, or None for no budget.
        language: only ``"python"``.
        isolation: "auto", "os" or "process".
    """
    if language not in LANGUAGES:
        raise ValueError(f"Unsupported code_execution_reward language {language!r}; valid: {', '.join(LANGUAGES)}.")
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"code_execution_reward max_workers must be >= 1, got {max_workers!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"code_execution_reward time_budget must be > 0 seconds, got {time_budget!r}.")
    base_limits = SandboxLimits(timeout=timeout, cpu_seconds=cpu_seconds, memory_mb=memory_mb, disk_mb=disk_mb,
                                max_processes=max_processes, open_files=open_files, output_bytes=output_bytes)
    level = resolve_isolation(isolation, "code_execution_reward")
    warn_process_cap(base_limits, level)

    def score(code: str, tests: str, deadline: float | None) -> tuple[float, str]:
        limits = base_limits
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0.05:
                return 0.0, "time budget"
            if left < timeout:
                limits = dataclasses.replace(base_limits, timeout=left, cpu_seconds=base_limits.cpu_limit)
        result = run_checked(code, tests, limits, level)
        if result.reason == "timeout" and limits.timeout < timeout:
            return 0.0, "time budget"
        return (1.0 if result.passed else 0.0), result.reason

    def code_execution_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        if level == "process":
            warn_process_level("code_execution_reward")
        all_tests = dataset_column(kwargs, tests_column, "code_execution_reward", len(completions))
        rewards: list[float | None] = [None] * len(completions)
        reasons = ["no tests"] * len(completions)
        jobs = {}
        for index, (completion, tests) in enumerate(zip(completions, all_tests)):
            if isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests):
                tests = "\n".join(tests)
            if not isinstance(tests, str):
                raise TypeError(
                    f"code_execution_reward: column {tests_column!r} at sample index {index} must be a string of "
                    f"Python tests or a list of them, got {type(tests).__name__}."
                )
            if tests.strip():
                jobs[index] = (extract_code(completion_text(completion, index)), tests)
        deadline = None if time_budget is None else time.monotonic() + time_budget
        workers = max_workers or min(4, max(1, len(jobs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            futures = {index: pool.submit(score, code, tests, deadline) for index, (code, tests) in jobs.items()}
            for index, future in futures.items():
                rewards[index], reasons[index] = future.result()
        code_execution_reward.last_reasons = reasons
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra("code_reason", reasons)
        return rewards

    code_execution_reward.last_reasons = []
    code_execution_reward.isolation = level
    code_execution_reward.higher_is_better = True  # declared for the start-up direction check
    return code_execution_reward
