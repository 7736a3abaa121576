"""The support matrix is the one place versions come from: pins, README table, checks, doctor, CI all follow it."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.version import Version

from grpo_custom.fork import versions

ROOT = Path(__file__).resolve().parents[2]
MATRIX = versions.load_matrix()


@pytest.fixture
def strict(monkeypatch):
    """The override variable cleared, whatever the environment says."""
    monkeypatch.delenv(versions.ALLOW_UNTESTED_ENV, raising=False)


def test_default_set_is_the_newest_supported_unsloth():
    newest = max(MATRIX.unsloth_sets, key=lambda s: Version(s.unsloth))
    assert MATRIX.default_set == newest
    assert {"2026.10.7", "2026.10.8", "2026.10.9"} <= {s.unsloth for s in MATRIX.unsloth_sets}
    assert any(not s.uses_unsloth and s.trl == "1.16.0" for s in MATRIX.sets)  # the plain fork on trl 1.16


def test_pyproject_pins_equal_the_matrix():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    trl = sorted(MATRIX.trl, key=Version)
    assert f"trl>={trl[0]},<={trl[-1]}" in project["dependencies"]
    extra = project["optional-dependencies"]["unsloth"]
    default = MATRIX.default_set
    assert f"unsloth=={default.unsloth}" in extra and f"unsloth_zoo=={default.unsloth_zoo}" in extra


def test_readme_supported_versions_table_is_generated_from_the_matrix():
    text = (ROOT / "README.md").read_text()
    block = text.split(versions.README_START, 1)[1].split(versions.README_END, 1)[0]
    assert block.strip() == versions.readme_table().strip()


def test_setup_reads_the_matrix_and_the_compat_job_runs_every_other_set():
    for version_set in MATRIX.sets:
        out = subprocess.run([sys.executable, str(ROOT / "grpo_custom/fork/versions.py"), "requirements",
                              version_set.name], capture_output=True, text=True, check=True).stdout.split()
        assert out == version_set.pins()
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'versions="$python grpo_custom/fork/versions.py"' in script and "$versions requirements" in script
    assert "--compat" in script
    compat = (ROOT / "scripts" / "compat_check.sh").read_text()
    assert "versions.py other-sets" in compat and "setup.sh --compat" in compat
    assert "bash scripts/compat_check.sh" in (ROOT / ".ci" / "run").read_text()  # CI runs the compat job
    other = subprocess.run([sys.executable, str(ROOT / "grpo_custom/fork/versions.py"), "other-sets"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert sorted(other) == sorted(s.name for s in MATRIX.sets if s.name != MATRIX.default_set_name)
    assert ".venv-compat/" in (ROOT / ".gitignore").read_text()


def test_installed_trl_file_matches_the_matrix_hash():
    from grpo_custom.fork import generate

    release = MATRIX.trl_release(generate.installed_trl_version())
    assert release is not None
    import hashlib

    assert hashlib.sha256(generate.upstream_trainer_path().read_bytes()).hexdigest() == \
        release.files[generate.UPSTREAM_FILE]


def test_unsupported_trl_is_an_error_naming_the_supported_ones_and_the_override_softens_it(strict):
    with pytest.raises(versions.UnsupportedVersionError, match=r"trl 9\.9\.9 is installed.*1\.15\.0.*"
                                                                r"GRPO_CUSTOM_ALLOW_UNTESTED_VERSIONS=1"):
        versions.check_trl_file("9.9.9", "trl/trainer/grpo_trainer.py", "0" * 64)
    with pytest.raises(versions.UnsupportedVersionError, match=r"sha256 0{64}.*--force-reinstall"):
        versions.check_trl_file("1.15.0", "trl/trainer/grpo_trainer.py", "0" * 64)


def test_override_turns_trl_errors_into_warnings(monkeypatch):
    monkeypatch.setenv(versions.ALLOW_UNTESTED_ENV, "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        versions.check_trl_file("9.9.9", "trl/trainer/grpo_trainer.py", "0" * 64)
    assert any("trl 9.9.9" in str(w.message) and "anchor checks still guard" in str(w.message) for w in caught)


def test_every_unsloth_set_is_accepted_and_others_refused(strict):
    for version_set in MATRIX.unsloth_sets:
        assert versions.check_unsloth_versions(version_set.versions()) == version_set
    with pytest.raises(versions.UnsupportedVersionError, match=r"unsloth 2099\.1\.1.*supported:.*2026\.10\.9"):
        versions.check_unsloth_versions({**MATRIX.default_set.versions(), "unsloth": "2099.1.1"})
    with pytest.raises(versions.UnsupportedVersionError, match="needs Unsloth"):
        versions.check_unsloth_versions({"trl": "1.15.0", "unsloth": None, "unsloth_zoo": None})


def test_doctor_prints_the_matrix_and_marks_the_installed_set():
    default = MATRIX.default_set
    lines = versions.matrix_lines(default.versions())
    marked = [line for line in lines if line.lstrip().startswith("*")]
    assert len(marked) == 1 and default.name in marked[0] and "installed" in marked[0] and "default" in marked[0]
    assert lines[-1].endswith(f"supported ({default.name})")
    untested = versions.matrix_lines({**default.versions(), "unsloth": "2099.1.1"})
    assert "untested" in untested[-1] and not any(line.lstrip().startswith("*") for line in untested[1:-1])


def test_cli_doctor_prints_the_matrix(capsys):
    from grpo_custom.cli.main import main

    main(["doctor"])
    text = capsys.readouterr().out
    assert "support matrix" in text
    assert re.search(r"installed: trl \S+, unsloth \S+.*-> (supported|untested)", text)


def test_cpu_logprob_stand_in_applies_only_where_the_installed_trl_has_no_cpu_path():
    from grpo_custom.fork import generate
    from grpo_custom.testing.cpu_logprob import trl_kernel_runs_here, use_torch_logprob_kernel

    release = MATRIX.trl_release(generate.installed_trl_version())
    assert trl_kernel_runs_here("cpu") is release.cpu_logprob_path  # asked by running TRL's kernel, as listed
    swap = use_torch_logprob_kernel()
    try:
        assert swap.active is not release.cpu_logprob_path
    finally:
        swap.revert()
