"""What ``grpo-custom doctor`` says about accelerator libraries: each one imported in a fresh interpreter.

A library can be installed and still not work: xformers built for another torch, torchao whose C++
extensions fail to load, bitsandbytes without its kernels. They say so on stderr (or as warnings) when
imported, and Unsloth then falls back silently. :func:`probe_library` imports one library in a fresh
``python`` process and keeps the import error and every line it printed that reports a load failure.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


ACCELERATOR_LIBRARIES = ("xformers", "bitsandbytes", "torchao", "triton", "vllm")
_PROBE = r"""
import importlib, json, logging, sys, warnings
name = sys.argv[1]
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        module = importlib.import_module(name)
        error = None
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
ours = [str(w.message).splitlines()[0] for w in caught
        if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))]
print("\n" + json.dumps({"error": error, "warnings": ours}))
"""
# Lines of a library's import output that say something did not load (the rest is noise such as deprecations).
_LOAD_PROBLEM = re.compile(r"can't load|cannot load|could not load|failed to load|not load|built for|"
                           r"no module named|undefined symbol|error", re.IGNORECASE)


@dataclass
class LibraryStatus:
    """One accelerator library: its version and what importing it in a fresh interpreter said."""

    name: str
    version: str | None  # None: not installed
    error: str | None = None  # the import failed
    problems: list[str] = field(default_factory=list)  # load errors / warnings it printed while importing

    @property
    def state(self) -> str:
        if self.version is None:
            return "not installed"
        if self.error:
            return "import fails"
        return "loads with problems" if self.problems else "loads"

    def line(self) -> str:
        head = f"  {self.name:<13} {self.version or '-':<12} {self.state}"
        detail = self.error or (self.problems[0] if self.problems else "")
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 and not self.error else ""
        return head + (f": {detail[:160]}{more}" if detail else "")


def probe_library(name: str, timeout: float = 120.0) -> LibraryStatus:
    """Import ``name`` in a fresh interpreter and collect the import error and any load problems it printed."""
    version = _version(name)
    if version == "not installed":
        return LibraryStatus(name, None)
    try:
        completed = subprocess.run([sys.executable, "-c", _PROBE, name], capture_output=True, text=True,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        return LibraryStatus(name, version, error=f"importing took longer than {timeout:.0f} s")
    last = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    try:
        found = json.loads(last)
    except json.JSONDecodeError:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return LibraryStatus(name, version, error=f"the probe crashed (exit {completed.returncode}): {tail}")
    lines = completed.stderr.splitlines()
    printed = []
    for index, line in enumerate(lines):
        if _LOAD_PROBLEM.search(line):
            detail = line.strip()
            if detail.endswith(":") and index + 1 < len(lines):  # "built for:" and the versions on the next line
                detail = f"{detail} {lines[index + 1].strip()}"
            printed.append(detail)
    problems = list(dict.fromkeys([*found["warnings"], *printed]))
    return LibraryStatus(name, version, error=found["error"], problems=problems)


def probe_accelerator_libraries(names=ACCELERATOR_LIBRARIES) -> list[LibraryStatus]:
    """:func:`probe_library` for each name, in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(probe_library, names))
