"""``scripts/gpu_check.sh --dry-run``: every part of the GPU check runs in its CPU smoke mode, and the report is
valid (``benchmarks/gpu_check/report.py``'s schema) with every part ok."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unsloth
ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check"


def _load(name: str):
    if str(GPU_CHECK) not in sys.path:
        sys.path.append(str(GPU_CHECK))  # their sibling import of gpu_check_common
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", GPU_CHECK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load("report")


def _call(*args: str) -> tuple[list[str], int]:
    """(parts besides install, GPU budget in s) of ``gpu_check.sh ARGS``, as its --print-parts says."""
    done = subprocess.run(["bash", "scripts/gpu_check.sh", *args, "--print-parts"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK")})
    assert done.returncode == 0, done.stderr
    parts, budget = done.stdout.split()
    return parts.split(","), int(budget)


MEASURED_S = {"install": 1.4, "environment": 12.9, "models": 18.3}  # H200, 2026-11-30 (benchmarks/results)
DEVICE_S, START_S, RESERVE_S = 900, 120, 8  # a lent device's 15 minutes; its start ("a minute or more"); the script's


def test_the_two_calls_cover_every_part_and_fit_the_device_time():
    """A lent device's 15 minutes hold two calls: between them every part runs; in each call the parts' caps (measured
    seconds for the three short ones) fit that call's budget, and both budgets plus a start fit the device time."""
    (first, budget_1), (second, budget_2) = _call("--call", "1"), _call("--call", "2")
    everything, budget_all = _call()
    assert set(first) | set(second) | {"install"} == set(report.PARTS) == set(everything) | {"install"}
    assert budget_all == budget_1 == 470 and budget_2 == 300
    gpu_branch = (ROOT / "scripts" / "gpu_check.sh").read_text().split('if [ "$MODE" = gpu ]; then\n    run_part env')
    caps = {}
    for line in ("    run_part env" + gpu_branch[1]).split("\nelse\n")[0].splitlines():
        words = line.split()
        if words[:1] == ["run_part"]:
            caps[words[1]] = int(words[2])
    assert list(caps) == everything, caps  # the run_part lines run in the order --print-parts gives
    needed_1 = MEASURED_S["install"] + sum(MEASURED_S.get(part, caps[part]) for part in first)
    assert needed_1 <= budget_1 - RESERVE_S, (first, needed_1)
    # call 2 ends with bench_loss, cut to what the budget leaves after the gpu tests' cap (~170 s of its 250 s cap)
    assert second[-1] == "bench_loss"
    left_for_bench = budget_2 - RESERVE_S - MEASURED_S["install"] - MEASURED_S["environment"] - caps["gpu_tests"]
    assert left_for_bench >= 60 + 100, left_for_bench
    assert START_S + budget_1 + budget_2 <= DEVICE_S
    assert sum(MEASURED_S.get(part, caps[part]) for part in everything) > budget_all - RESERVE_S  # why two calls


def test_an_unknown_call_is_refused():
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--call", "3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "--call (GPU_CHECK_CALL) must be 1 or 2, not '3'" in done.stderr


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("UNSLOTH_", "GRPO_CUSTOM_"))}
    env["OUT"] = str(out)
    completed = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=1500)
    return completed, out


def test_dry_run_exits_zero_with_a_valid_report_and_every_part_ok(dry_run):
    completed, out = dry_run
    log = (out / "gpu_check.log").read_text()[-6000:] if (out / "gpu_check.log").exists() else ""
    assert completed.returncode == 0, f"{completed.stdout[-4000:]}\n{completed.stderr[-3000:]}\n{log}"
    data = json.loads((out / "gpu_check.json").read_text())
    assert report.validate(data, require_ok=True) == []
    assert data["mode"] == "dry-run" and data["finished"] is True
    assert list(data["parts"]) == list(report.PARTS)
    assert all(part["status"] == "ok" for part in data["parts"].values())
    assert "gpu_check.json valid" in completed.stdout


def test_dry_run_figures_cover_every_part(dry_run):
    _, out = dry_run
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert parts["environment"]["figures"]["versions"]["unsloth"]
    assert parts["models"]["figures"]["tokenizer"]["entries"] == 512
    assert {"qwen2.5-0.5b", "qwen2.5-1.5b"} <= set(parts["models"]["figures"])
    assert {row["variant"] for row in parts["bench_loss"]["figures"]["rows"]} >= {"base", "entropy", "naive entropy"}
    summary = parts["step_compare"]["figures"]["summary"]
    assert summary["stock"]["trainer_class"] == summary["fork"]["trainer_class"] == "UnslothGRPOTrainer"
    assert summary["fork_over_stock_step_time"] > 0
    assert summary["first_runs_losses"]["equal"], summary["first_runs_losses"]  # default settings train like stock
    e2e = parts["e2e_step"]["figures"]
    assert e2e["update_s"] > 0 and e2e["generation_tokens_per_s"] > 0 and "mfu" in e2e
    assert parts["gpu_tests"]["figures"]["exit_code"] == 0
    markdown = (out / "gpu_check.md").read_text()
    assert "## step_compare: ok" in markdown and "benchmarks/results/gpu-" in markdown


def test_validate_rejects_a_broken_report(tmp_path):
    path = tmp_path / "gpu_check.json"
    data = report.init(path, "gpu", 470)
    assert report.validate(data) == []
    assert report.validate(data, require_ok=True)  # nothing ran: not ok
    data["parts"]["models"]["status"] = "done"
    del data["parts"]["gpu_tests"]
    problems = report.validate(data)
    assert any("status 'done'" in p for p in problems) and any("parts are" in p for p in problems)
    assert subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check/report.py"), "validate", "--json",
                           str(path)]).returncode == 0  # the file on disk is still the valid one


def test_install_links_follow_pyproject_package_dir():
    install_info = _load("install_info")
    for link, target in install_info.package_dir_links(ROOT):
        assert target.is_dir() and not link.exists()
