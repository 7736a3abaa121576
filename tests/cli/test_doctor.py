"""``grpo-custom doctor`` prints its verdict first; what libraries print while it imports them comes after it."""
from __future__ import annotations

import os
import sys
import warnings

import pytest


def _noisy_accelerators(report, on_gpu):
    """Stands in for the accelerator probe (fresh interpreters, slow) and prints the way importing a library does:
    on file descriptor 2 (a C extension), on sys.stderr and sys.stdout (Python code), and as a warning."""
    os.write(2, b"C-LEVEL: Failed to load _C_mxfp8.so\n")
    print("PY-STDERR: Unsloth banner", file=sys.stderr)
    print("PY-STDOUT: Unsloth: Will patch your computer to enable 2x faster free finetuning.")
    warnings.warn("WARN: a deprecation printed while importing", UserWarning)
    report.lines.append("accelerator libraries: (probe replaced in this test)")


NOISE = ("C-LEVEL: Failed to load _C_mxfp8.so", "PY-STDERR: Unsloth banner",
         "PY-STDOUT: Unsloth: Will patch your computer", "WARN: a deprecation printed while importing")


@pytest.fixture
def noisy(monkeypatch):
    from grpo_custom.cli import doctor

    monkeypatch.setattr(doctor, "_report_accelerators", _noisy_accelerators)
    return doctor


def test_doctor_captures_import_output_and_prints_the_verdict_first(noisy, capfd, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        report = noisy.doctor_report()
    leaked = capfd.readouterr()
    assert not any(n in leaked.out + leaked.err for n in NOISE), leaked  # nothing reached the terminal meanwhile
    for n in NOISE:
        assert any(n in line for line in report.import_output), (n, report.import_output)

    from grpo_custom.cli.main import main

    monkeypatch.setattr(noisy, "doctor_report", lambda: report)  # print the report just collected
    assert main(["doctor"]) == (0 if report.healthy else 1)
    printed = capfd.readouterr()
    lines = printed.out.splitlines()
    assert lines[0] == report.verdict() and lines[0].startswith("grpo-custom doctor: ")
    assert ("all good" in lines[0]) == report.healthy
    last_finding = max(i for i, line in enumerate(lines) if line in ("all good", "problems:") or line.startswith("  - "))
    noise_at = [i for i, line in enumerate(lines) if any(n in line for n in NOISE)]
    assert {n for n in NOISE for i in noise_at if n in lines[i]} == set(NOISE)
    assert min(noise_at) > last_finding  # after the whole report
    assert not any(n in printed.err for n in NOISE)


def test_doctor_verdict_names_the_problem_count():
    from grpo_custom.cli.doctor import DoctorReport

    report = DoctorReport(lines=["x"], problems=["trl 9.9 is not in the support matrix", "xformers does not load"],
                          import_output=[f"line {i}" for i in range(50)])
    text = report.text(max_import_lines=3).splitlines()
    assert text[0] == "grpo-custom doctor: 2 problem(s), listed under 'problems:' below"
    assert text[-4:] == ["  | line 0", "  | line 1", "  | line 2", "  | ... (+47 more lines)"]
    assert text.index("problems:") < text.index("  | line 0")



def test_output_of_the_parsers_imports_goes_after_the_verdict(noisy, capfd, monkeypatch):
    # `grpo-custom` builds its parser first, which imports torch and TRL (torchao, bitsandbytes and Unsloth print
    # while imported): that output joins doctor's captured import output; another command gets it on stderr
    from grpo_custom.cli import main as cli

    real_build = cli.build_parser

    def noisy_build():
        os.write(2, b"PARSER-IMPORT: Failed to load _C_cutlass_90a.abi3.so\n")
        return real_build()

    monkeypatch.setattr(cli, "build_parser", noisy_build)
    report = noisy.DoctorReport(lines=["grpo-custom 0.0 on Python 3"])
    monkeypatch.setattr(noisy, "doctor_report", lambda: report)
    assert cli.main(["doctor"]) == 0
    printed = capfd.readouterr()
    lines = printed.out.splitlines()
    assert lines[0] == "grpo-custom doctor: all good" and "PARSER-IMPORT" not in printed.err
    assert lines[-1] == "  | PARSER-IMPORT: Failed to load _C_cutlass_90a.abi3.so"
    monkeypatch.setattr(cli, "_vendor", lambda args: print("vendored") or 0)
    cli.main(["vendor", "--out", "unused"])
    printed = capfd.readouterr()
    assert printed.out == "vendored\n" and "PARSER-IMPORT: Failed to load" in printed.err
