"""Task-balanced prompt sampling in the exact index layout of TRL's ``RepeatSampler`` (groups stay intact)."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from grpo_custom.rewards.tasks.audit import _read_task_labels


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
