"""``grpo-custom doctor``: versions, CUDA, and which grpo-custom pieces are active."""
from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass, field

PACKAGES = ("torch", "trl", "transformers", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo",
            "bitsandbytes", "xformers")


@dataclass
class DoctorReport:
    """What ``doctor`` found: ``lines`` to print and ``problems`` that make it unhealthy."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when nothing needs fixing."""
        return not self.problems

    def text(self) -> str:
        """The report as printed."""
        tail = ["", "problems:", *(f"  - {p}" for p in self.problems)] if self.problems else ["", "all good"]
        return "\n".join([*self.lines, *tail])


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def doctor_report() -> DoctorReport:
    """Collect versions, CUDA availability, the fork's state and the Unsloth patch's state."""
    from grpo_custom.fork.generate import (
        FORK_MODULE_NAME,
        TRL_VERSION,
        UpstreamMismatchError,
        fork_is_loaded,
        read_upstream_source,
    )
    from grpo_custom.patches import GRPO_TRAINER_EDITS
    from grpo_custom.utils.version import __version__

    report = DoctorReport()
    report.lines.append(f"grpo-custom {__version__} on Python {platform.python_version()}")
    for name in PACKAGES:
        report.lines.append(f"  {name:<13} {_version(name)}")
    import torch

    if torch.cuda.is_available():
        report.lines.append(f"CUDA: available ({torch.cuda.get_device_name(0)}, torch CUDA {torch.version.cuda})")
    else:
        report.lines.append("CUDA: not available (CPU only: 4-bit, vLLM and Unsloth's real GPU path are off)")

    try:
        read_upstream_source()
        report.lines.append(f"upstream: trl {TRL_VERSION} grpo_trainer.py matches the pinned sha256")
        from grpo_custom.fork.generate import write_fork

        path = write_fork()
        report.lines.append(f"fork: generated at {path} with {len(GRPO_TRAINER_EDITS)} edits "
                            f"({', '.join(e.name for e in GRPO_TRAINER_EDITS)})")
    except (UpstreamMismatchError, RuntimeError) as error:
        report.problems.append(str(error))
    report.lines.append(f"fork imported in this process: {'yes' if fork_is_loaded() else 'no'} ({FORK_MODULE_NAME})")

    from grpo_custom.unsloth.patch import patch_status

    report.lines.append(f"Unsloth patch: {patch_status()}")
    from grpo_custom.rewards.sandbox import isolation_summary

    report.lines.append(isolation_summary())
    return report
