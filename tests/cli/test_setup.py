"""The README's two set-up commands are what CI and users run."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up and run\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "README needs a '## Set up and run' section with a bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands_main_job_and_tests():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("grpo-custom demo") and commands[0].startswith("bash scripts/setup.sh")
    assert "--test" in commands[1] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci.splitlines()


def test_setup_script_pins_cpu_torch_and_removes_cuda_torchvision():
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert "torch_cpu_version=2.13.0" in script and '-c "$constraints"' in script
    assert "uninstall --quiet --yes torchvision" in script


def test_wheel_carries_every_subpackage_the_edits_and_the_support_matrix(tmp_path):
    """A non-editable install (Colab's `pip install git+...`) gets the data files the package reads at run time."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("grpo_custom-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "grpo_custom/fork/support_matrix.json" in names
    assert "grpo_custom/patches/grpo_trainer.py" in names
    for package in ("algorithms", "rewards", "rewards/sandbox", "rewards/tasks", "fork", "fork/hooks", "unsloth",
                    "cli", "testing", "utils"):
        assert f"grpo_custom/{package}/__init__.py" in names, package
