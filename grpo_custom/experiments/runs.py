"""One run of an experiment (a variant on a seed): build it with the user's ``make_trainer``, check it, train it,
and store what it logged in ``<run folder>/result.json``.

``result.json`` is written atomically once ``trainer.train()`` has returned, so its presence marks a finished run:
a run killed or crashed before that leaves a folder without it, and the next call trains that run again from
scratch. A finished run whose overrides changed since (a different key) is trained again too.
"""
from __future__ import annotations

import gc
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from grpo_custom.experiments.curves import curves_from_log_history
from grpo_custom.experiments.fingerprints import trainer_facts
from grpo_custom.experiments.variants import ExperimentError, Variant, overrides_key, plain
from grpo_custom.experiments.yaml_loading import write_json_atomically

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
RESULT_FORMAT = 1


def load_finished(directory: Path, key: str) -> dict | None:
    """The result of the finished run in ``directory`` for overrides key ``key``, or None (absent, unreadable,
    another format or another key: the run is to be trained again)."""
    path = Path(directory) / RESULT_FILE
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT or result.get("key") != key:
        return None
    return result if result.get("finished") is True else None


def check_seeds(facts: dict, seed: int, output_dir: Path, where: str) -> None:
    """Raise :class:`ExperimentError` unless the trainer's config uses the run's seed and folder.

    TRL's GRPO sampler orders prompts by ``args.seed``: a ``make_trainer`` that ignores the seed it is given would
    give every run the same (or an unrelated) order and initialisation, silently.
    """
    if facts["seed"] != seed:
        raise ExperimentError(
            f"{where}: make_trainer built a trainer with args.seed={facts['seed']!r}, not the run's seed {seed}. "
            "Pass it on: GRPOConfig(seed=seed, data_seed=seed, output_dir=output_dir), so every variant sees the "
            "same data order for a seed")
    if facts["data_seed"] not in (None, seed):
        raise ExperimentError(f"{where}: make_trainer built a trainer with args.data_seed={facts['data_seed']!r}; "
                              f"set data_seed=seed ({seed}) or leave it unset")
    if facts["output_dir"] is None or Path(facts["output_dir"]).resolve() != Path(output_dir).resolve():
        raise ExperimentError(f"{where}: make_trainer built a trainer with args.output_dir={facts['output_dir']!r}, "
                              f"not the run's folder {str(output_dir)!r}: pass output_dir on to the config")


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (generation, scoring and update)."""

        def __init__(self):
            self.durations, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self._start is not None:
                self.durations.append(time.perf_counter() - self._start)
                self._start = None

    return StepTimer()


def _peak_memory() -> tuple[float | None, float | None]:
    """(peak CUDA memory allocated since the last reset in MiB or None without CUDA, this process's peak RSS in MiB)."""
    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    except ImportError:  # not on POSIX
        rss = None
    return gpu, rss


def execute_run(make_trainer: Callable, variant_name: str, variant: Variant, seed: int, directory: Path, *,
                before_training: Callable[[dict], None] | None = None, callbacks: tuple = ()) -> dict:
    """Train one run in ``directory`` (any leftover of an unfinished run there is deleted first) and return its
    result (also written to ``directory/result.json``).

    ``make_trainer(overrides, seed, output_dir)`` is called after ``transformers.set_seed(seed)``, with
    ``output_dir = directory/"trainer"``; ``before_training(facts)`` may raise to refuse the run before it trains;
    ``callbacks`` are added to the trainer.

    Returns:
        ``{"format", "key", "finished": True, "variant", "seed", "overrides", "note", "curves", "steps", "facts",
        "trainer"}``: ``facts`` holds ``wall_time_s`` (``trainer.train()``), ``build_time_s`` (``make_trainer``),
        ``global_steps``, ``step_time_s`` (mean and median over steps, the first step apart),
        ``peak_gpu_memory_mib`` (CUDA only, else None), ``process_peak_rss_mib`` (the process's peak since it
        started: an upper bound, runs share the process) and the trainer's own summary (``train_runtime``, ...).

    Raises:
        ExperimentError: the trainer ignores the seed or the folder it was given (:func:`check_seeds`), or
            ``before_training`` refused it.
    """
    import torch
    from transformers import set_seed

    directory = Path(directory)
    if directory.exists():
        logger.info("%s: an unfinished or outdated run is in %s; training it again", variant_name, directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    trainer_dir = directory / "trainer"
    where = f"variant {variant_name!r}, seed {seed}"
    set_seed(seed)
    started = time.perf_counter()
    trainer = make_trainer(dict(variant.overrides), seed, str(trainer_dir))
    build_time = time.perf_counter() - started
    try:
        facts = trainer_facts(trainer)
        check_seeds(facts, seed, trainer_dir, where)
        if before_training is not None:
            before_training(facts)
        timer = _step_timer()
        for callback in (timer, *callbacks):
            trainer.add_callback(callback)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train()
        wall_time = time.perf_counter() - started
        curves, steps, summary = curves_from_log_history(trainer.state.log_history)
        global_steps = int(trainer.state.global_step)
    finally:
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    gpu_peak, rss_peak = _peak_memory()
    later = timer.durations[1:]
    result = {
        "format": RESULT_FORMAT, "key": overrides_key(variant.overrides), "finished": True,
        "variant": variant_name, "seed": seed, "overrides": plain(variant.overrides), "note": variant.note,
        "curves": curves, "steps": steps,
        "facts": {
            "wall_time_s": wall_time, "build_time_s": build_time, "global_steps": global_steps,
            "step_time_s": {"mean": statistics.fmean(later) if later else None,
                            "median": statistics.median(later) if later else None,
                            "first": timer.durations[0] if timer.durations else None},
            "peak_gpu_memory_mib": gpu_peak, "process_peak_rss_mib": rss_peak, **summary,
        },
        "trainer": facts,
    }
    write_json_atomically(directory / RESULT_FILE, result)
    return result
