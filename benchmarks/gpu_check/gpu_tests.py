"""GPU check, part "gpu_tests": ``python -m pytest -q -m gpu`` on the test files with gpu marks, per-test outcomes.

    python benchmarks/gpu_check/gpu_tests.py --result PATH [--budget-s S] [--smoke]

Passes when pytest exits 0 (on a CPU, ``--smoke``, every gpu-marked test is skipped: that is a pass there).
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from gpu_check_common import ResultFile

ROOT = Path(__file__).resolve().parents[2]


def parse_junit(path: Path) -> dict:
    tree = ElementTree.parse(path)
    tests = []
    for case in tree.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                message = (child.get("message") or "") + "\n" + (child.text or "")
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time") or 0), 2), "message": message.strip()[-1500:]})
    counts = {}
    for test in tests:
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    return {"counts": counts, "tests": tests}


def gpu_test_files() -> list[str]:
    """tests/**/test_*.py files that mark tests ``gpu`` (``pytest.mark.gpu`` / ``mark.gpu``), relative to the root."""
    marker = re.compile(r"\bmark\.gpu\b")
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
                  if marker.search(path.read_text(errors="replace")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", default=None)
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--smoke", action="store_true")
    options = parser.parse_args(argv)
    result = ResultFile(options.result)
    junit = Path(tempfile.mkdtemp(prefix="gpu_tests_")) / "junit.xml"
    # Only the files that hold gpu-marked tests are collected: collecting all of tests/ imports test-only
    # packages the GPU image lacks (nbformat, ...), and one collection error would stop the whole run.
    files = gpu_test_files()
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", *(files or ["tests"]), "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={junit}"]
    timeout = max(options.budget_s - 3, 10) if options.budget_s else None
    if timeout and importlib.util.find_spec("pytest_timeout") is not None:
        # a hanging test fails on its own and the JUnit report of the others is still written
        command.append(f"--timeout={max(int(timeout) - 15, 5)}")
    result.set("command", " ".join(command[1:]))
    started = time.perf_counter()
    try:
        returncode = subprocess.run(command, cwd=ROOT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        returncode = "timeout"
        result.note(f"pytest stopped at {timeout:.0f} s: the JUnit report of the tests that finished is lost")
    result.update({"exit_code": returncode, "seconds": round(time.perf_counter() - started, 1)})
    if junit.exists():
        result.update(parse_junit(junit))
    return 0 if returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
