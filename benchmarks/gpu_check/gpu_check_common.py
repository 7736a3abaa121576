"""Shared pieces of the GPU check's parts (``scripts/gpu_check.sh``): result files, environment, prompts, rewards.

Every part writes one JSON result file ``{"figures": {...}, "notes": [...]}`` and rewrites it as figures
come in, so a part stopped by its timeout still reports what it measured. Standard library only at import
(``report.py`` runs with the bare image's python).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

# What an offline run needs; the shell sets these too, scripts run alone set them here.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "UNSLOTH_DISABLE_STATISTICS": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
# CPU smoke runs: Unsloth's GPU code path on CPU (GUIDE §2), torch.compile off.
SMOKE_ENVIRONMENT = {
    "UNSLOTH_ALLOW_CPU": "1",
    "UNSLOTH_COMPILE_DISABLE": "1",
    "TORCHDYNAMO_DISABLE": "1",
    "UNSLOTH_GRPO_SEQ_PACKING": "0",
    "UNSLOTH_GRPO_PREFIX_GROUPER": "0",
    "CUDA_VISIBLE_DEVICES": "",
}


def configure_environment(smoke: bool, work_dir: str | os.PathLike | None = None) -> None:
    """Set (setdefault) the offline variables, temp caches under ``work_dir``, and the smoke spoof on CPU."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if work_dir is not None:
        work = Path(work_dir)
        os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(work / "unsloth_compiled"))
        os.environ.setdefault("GRPO_CUSTOM_CACHE_DIR", str(work / "grpo_custom_cache"))
    if smoke:
        for key, value in SMOKE_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    elif os.environ.get("UNSLOTH_ALLOW_CPU"):
        raise RuntimeError("UNSLOTH_ALLOW_CPU is set on a GPU run: unset it (it spoofs a GPU on CPU).")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResultFile:
    """``{"figures": {...}, "notes": [...]}`` written atomically after every change."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.data = {"figures": {}, "notes": []}
        self.save()

    @property
    def figures(self) -> dict:
        return self.data["figures"]

    def set(self, key: str, value) -> None:
        self.figures[key] = value
        self.save()

    def update(self, values: dict) -> None:
        self.figures.update(values)
        self.save()

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.data["notes"].append(text)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=repr))
        temporary.replace(self.path)


class Deadline:
    """Seconds left of a budget that started at construction."""

    def __init__(self, budget_s: float | None):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        if self.budget_s is None:
            return float("inf")
        return self.budget_s - (time.monotonic() - self.start)


def synchronize() -> None:
    """torch.cuda.synchronize() where CUDA is in use (no-op on CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def prompts(count: int, characters: int) -> list[str]:
    """``count`` distinct plain-text prompts of about ``characters`` characters (a byte-level tokenizer with no
    merges makes one token per byte, so this is also their length in tokens)."""
    topics = ["rivers", "prime numbers", "bread", "tides", "compilers", "owls", "glaciers", "chess", "copper",
              "lighthouses", "bees", "volcanoes", "maps", "violins", "deserts", "comets"]
    out = []
    for index in range(count):
        text = f"Question {index}: write one short, plain sentence about {topics[index % len(topics)]}."
        while len(text) < characters:
            text += " Keep it simple and use common words only."
        out.append(text[:characters])
    return out


def letter_fraction_reward(prompts, completions, **kwargs):
    """Fraction of ASCII letters in each completion: varies on a random model's output."""
    return [sum(ch.isascii() and ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


def space_count_reward(prompts, completions, **kwargs):
    """Number of spaces, capped at 10, over 10."""
    return [min(c.count(" "), 10) / 10 for c in completions]


def import_first(*module_names: str):
    """The first of ``module_names`` that imports (grpo-custom internals move between releases)."""
    import importlib

    errors = []
    for name in module_names:
        try:
            return importlib.import_module(name)
        except ImportError as error:
            errors.append(f"{name}: {error}")
    raise ImportError("none of these modules imports: " + "; ".join(errors))


def package_versions(names) -> dict:
    import importlib.metadata as metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def bitsandbytes_native() -> tuple[bool, str]:
    """(usable, detail): whether bitsandbytes imports and its native library loaded (8-bit Adam, 4-bit need it)."""
    try:
        import bitsandbytes  # noqa: F401
        from bitsandbytes.cextension import lib
    except Exception as error:  # noqa: BLE001 - reported by the caller
        return False, f"{type(error).__name__}: {error}"[:300]
    name = type(lib).__name__
    return (lib is not None and "Mock" not in name and "Error" not in name), name
