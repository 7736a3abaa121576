"""The environment an experiment ran in, for its report: package versions, Python, platform, GPU, git commits."""
from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("grpo-custom", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo",
            "bitsandbytes", "vllm", "optuna", "numpy")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(directory: str | Path) -> dict | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``directory``, or None (no git, not a checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment_report(project_dir: str | Path = ".") -> dict:
    """Versions of :data:`PACKAGES` (None: not installed), Python, platform, CPU count, the GPUs (name, memory),
    the git commit of ``project_dir`` (the user's project: the current folder) and of grpo-custom's own checkout."""
    import os

    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            gpus.append({"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1)})
    package_dir = Path(__file__).resolve().parents[2]
    return {
        "packages": {name: _version(name) for name in PACKAGES},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": gpus,
        "git": {"project": git_commit(project_dir), "grpo_custom": git_commit(package_dir)},
    }
