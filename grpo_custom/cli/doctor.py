"""``grpo-custom doctor``: versions, CUDA, accelerator libraries' load status, and which grpo-custom pieces are active.

The report starts with its verdict. What the libraries print while doctor imports them (Unsloth's banner,
torchao's and bitsandbytes' load failures, torch's deprecation warnings) is captured, on the Python streams
and on file descriptors 1 and 2 alike (:func:`captured_output`), and printed after the report.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import io
import os
import platform
import sys
import tempfile
import warnings
from dataclasses import dataclass, field

PACKAGES = ("torch", "trl", "transformers", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo",
            "bitsandbytes", "xformers")


@dataclass
class DoctorReport:
    """What ``doctor`` found: ``lines`` to print and ``problems`` that make it unhealthy."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not broken (e.g. GPU libraries on a CPU)
    import_output: list[str] = field(default_factory=list)  # what the libraries printed while doctor imported them

    @property
    def healthy(self) -> bool:
        """True when nothing needs fixing."""
        return not self.problems

    def verdict(self) -> str:
        """The first line printed: all good, or how many problems (listed under ``problems:``)."""
        if self.healthy:
            return "grpo-custom doctor: all good"
        return f"grpo-custom doctor: {len(self.problems)} problem(s), listed under 'problems:' below"

    def text(self, max_import_lines: int = 40) -> str:
        """The report as printed: the verdict, the findings, then at most ``max_import_lines`` lines of import output."""
        tail = ["", "problems:", *(f"  - {p}" for p in self.problems)] if self.problems else ["", "all good"]
        notes = ["", "notes:", *(f"  - {n}" for n in self.notes)] if self.notes else []
        noise = []
        if self.import_output:
            shown = self.import_output[:max_import_lines]
            more = len(self.import_output) - len(shown)
            noise = ["", "printed by the libraries while doctor imported them (captured; the verdict above stands):",
                     *(f"  | {line}" for line in shown), *([f"  | ... (+{more} more lines)"] if more else [])]
        return "\n".join([self.verdict(), "", *self.lines, *notes, *tail, *noise])


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _write_warning(stream, message, category, filename, lineno, file=None, line=None) -> None:
    stream.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def captured_output(sink: list[str]):
    """Send everything written to stdout and stderr while the block runs into ``sink`` (lines, empty ones dropped):
    ``sys.stdout``/``sys.stderr``, warnings, and file descriptors 1 and 2 (C extensions, torch's C++ logger)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    python_side = io.StringIO()
    with tempfile.TemporaryFile() as fd_side:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(fd_side.fileno(), 1)
            os.dup2(fd_side.fileno(), 2)
            with contextlib.redirect_stdout(python_side), contextlib.redirect_stderr(python_side), \
                    warnings.catch_warnings():
                warnings.showwarning = functools.partial(_write_warning, python_side)  # whoever shows warnings now
                yield sink
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):  # handlers made before may hold these objects
                with contextlib.suppress(Exception):
                    stream.flush()
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)  # C stdio buffers still bound for the captured descriptors
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            fd_side.seek(0)
            text = fd_side.read().decode("utf-8", "replace") + python_side.getvalue()
            sink.extend(line.rstrip() for line in text.splitlines() if line.strip())


def doctor_report() -> DoctorReport:
    """Collect versions, CUDA availability, the fork's state and the Unsloth patch's state; what the imports print
    goes to ``import_output`` (see :func:`captured_output`)."""
    report = DoctorReport()
    with captured_output(report.import_output):
        _collect(report)
    return report


def _collect(report: DoctorReport) -> None:
    """Fill ``report`` (the checks of :func:`doctor_report`)."""
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

    report.lines.append(f"grpo-custom {__version__} on Python {platform.python_version()}")
    for name in PACKAGES:
        report.lines.append(f"  {name:<13} {_version(name)}")
    import torch

    if torch.cuda.is_available():
        report.lines.append(f"CUDA: available ({torch.cuda.get_device_name(0)}, torch CUDA {torch.version.cuda})")
    else:
        report.lines.append("CUDA: not available (CPU only: 4-bit, vLLM and Unsloth's real GPU path are off)")
    report.lines.extend(matrix_lines())
    from grpo_custom.algorithms.sharding import launch_engine

    engine, world_size = launch_engine()
    report.lines.append(f"engine: {engine}, world size {world_size} (from the launch environment)")
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
