"""``grpo-custom doctor``: versions, CUDA, accelerator libraries' load status, and which grpo-custom pieces are active."""
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
    notes: list[str] = field(default_factory=list)  # worth knowing, not broken (e.g. GPU libraries on a CPU)

    @property
    def healthy(self) -> bool:
        """True when nothing needs fixing."""
        return not self.problems

    def text(self) -> str:
        """The report as printed."""
        tail = ["", "problems:", *(f"  - {p}" for p in self.problems)] if self.problems else ["", "all good"]
        notes = ["", "notes:", *(f"  - {n}" for n in self.notes)] if self.notes else []
        return "\n".join([*self.lines, *notes, *tail])


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def doctor_report() -> DoctorReport:
    """Collect versions, CUDA availability, the fork's state and the Unsloth patch's state."""
    from grpo_custom.fork.generate import (
        FORK_MODULE_NAME,
        UpstreamMismatchError,
        fork_is_loaded,
        installed_trl_version,
        read_upstream_source,
    )
    from grpo_custom.fork.versions import matrix_lines
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
    report.lines.extend(matrix_lines())
    _report_accelerators(report, on_gpu=torch.cuda.is_available())

    try:
        read_upstream_source()
        report.lines.append(f"upstream: trl {installed_trl_version()} grpo_trainer.py matches the support matrix's sha256")
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


def _report_accelerators(report: DoctorReport, on_gpu: bool) -> None:
    """Each accelerator library's real load status; a load failure is a problem on a GPU, a note on a CPU."""
    from grpo_custom.cli.accelerators import probe_accelerator_libraries

    report.lines.append("accelerator libraries (each imported in a fresh interpreter):")
    for status in probe_accelerator_libraries():
        report.lines.append(status.line())
        if status.version is None or not (status.error or status.problems):
            continue
        what = f"{status.name} {status.version}: {status.error or status.problems[0]}"
        if on_gpu:
            report.problems.append(what + " (Unsloth falls back to slower code; reinstall a build for this torch)")
        else:
            report.notes.append(what + " (expected without a GPU)")
