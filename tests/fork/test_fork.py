"""The fork is generated from the installed TRL: checked hash/version, each edit exactly once, CLI."""
from __future__ import annotations

import importlib
import re

import pytest

from grpo_custom.fork import generate as fork
from grpo_custom.fork.versions import ALLOW_UNTESTED_ENV, check_trl_file, load_matrix
from grpo_custom.fork.source_edit import EditDidNotApplyError, SourceEdit, apply_edits
from grpo_custom.patches import GRPO_TRAINER_EDITS


def test_each_edit_anchor_occurs_exactly_once_upstream():
    upstream = fork.read_upstream_source()
    for edit in GRPO_TRAINER_EDITS:
        assert upstream.count(edit.anchor) == 1, edit.name


def test_every_edit_lands_in_the_fork_and_has_a_reason():
    source = fork.fork_source()
    for edit in GRPO_TRAINER_EDITS:
        assert edit.replacement in source, edit.name
        assert edit.reason and len(edit.reason.splitlines()) == 1
    assert len({edit.name for edit in GRPO_TRAINER_EDITS}) == len(GRPO_TRAINER_EDITS)


def test_broken_anchor_names_the_edit_and_upstream_version():
    upstream = fork.read_upstream_source()
    version = fork.installed_trl_version()
    broken = SourceEdit("demo_edit", "test", "this line is not in trl\n", "x\n")
    with pytest.raises(EditDidNotApplyError, match=rf"'demo_edit'.*trl {re.escape(version)}.*found it 0 times"):
        apply_edits(upstream, (broken,), f"trl {version} trl/trainer/grpo_trainer.py")
    duplicated = SourceEdit("twice", "test", "import torch\n", "import torch\n")
    with pytest.raises(EditDidNotApplyError, match="'twice'.*found it [2-9]"):
        duplicated.apply("import torch\nimport torch\n", "upstream")


def test_wrong_upstream_hash_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    version = fork.installed_trl_version()
    monkeypatch.setattr(fork, "check_trl_file", lambda v, path, digest: check_trl_file(v, path, "0" * 64))
    with pytest.raises(fork.UpstreamMismatchError,
                       match=rf"sha256 0{{64}}.*pip install --force-reinstall --no-deps 'trl=={re.escape(version)}'"):
        fork.read_upstream_source()


def test_unsupported_trl_version_names_the_supported_ones_and_the_override_only_warns(monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(fork, "installed_trl_version", lambda: "9.9.9")
    supported = ", ".join(load_matrix().trl)
    with pytest.raises(fork.UpstreamMismatchError, match=rf"trl 9\.9\.9 is installed.*supports trl {re.escape(supported)}"):
        fork.fork_source()
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(UserWarning, match=r"trl 9\.9\.9 is installed"):
        source = fork.fork_source()  # the exactly-once anchor checks still ran on the installed file
    assert all(edit.replacement in source for edit in GRPO_TRAINER_EDITS)


def test_fork_file_is_reused_when_inputs_are_unchanged_and_regenerated_when_they_change(tmp_path, monkeypatch):
    monkeypatch.setenv(fork.CACHE_DIR_ENV, str(tmp_path))
    first = fork.write_fork()
    stamp = first.stat().st_mtime_ns
    assert fork.write_fork() == first and first.stat().st_mtime_ns == stamp
    changed = fork.write_fork(fork.fork_source() + "\n# changed\n")
    assert changed != first and changed.exists()


def test_fork_module_is_a_real_file_holding_the_hooks():
    module = fork.load_fork()
    import inspect

    source = inspect.getsource(module.GRPOTrainer)
    assert "grpo_custom_hooks.compute_advantages(" in source
    assert module.__name__ == fork.FORK_MODULE_NAME
    assert module.GRPOConfig is importlib.import_module("grpo_custom.fork.config").GRPOConfig


def test_cli_vendor_and_diff(tmp_path, capsys):
    from grpo_custom.cli.main import main

    out = tmp_path / "fork.py"
    assert main(["vendor", "--out", str(out)]) == 0
    assert out.read_text() == fork.fork_source()
    capsys.readouterr()
    assert main(["diff"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith(f"--- trl-{fork.installed_trl_version()}/trl/trainer/grpo_trainer.py")
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any("grpo_custom_hooks.compute_advantages(" in line for line in added)
    # the diff only adds/changes what the edits say: no upstream logic removed beyond the replaced anchors
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert len(removed) == 4  # config import + the two reference gates + the in-memory reference model


def test_cli_doctor_reports_versions_and_fork(capsys):
    from grpo_custom.cli.main import main

    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert f"trl           {fork.installed_trl_version()}" in text
    assert "matches the support matrix's sha256" in text
    assert "support matrix" in text and "installed: trl" in text
    assert "Unsloth patch: not active" in text
    assert "CUDA:" in text
