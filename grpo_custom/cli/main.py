"""The ``grpo-custom`` command line: ``demo``, ``vendor``, ``diff`` and ``doctor``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _vendor(args) -> int:
    from grpo_custom.fork.generate import fork_source

    out = Path(args.out)
    if out.is_dir():
        out = out / "grpo_trainer.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(fork_source(), encoding="utf-8")
    print(f"wrote the forked trainer to {out}")
    return 0


def _diff(args) -> int:
    from grpo_custom.fork.generate import fork_diff

    sys.stdout.write(fork_diff())
    return 0


def _doctor(args) -> int:
    from grpo_custom.cli.doctor import doctor_report

    report = doctor_report()
    print(report.text())
    return 0 if report.healthy else 1


def _demo(args) -> int:
    from grpo_custom.cli.demo import run_demo

    run_demo(estimator=args.estimator, steps=args.steps, output_dir=args.output_dir, model_name=args.model,
             seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``grpo-custom``."""
    parser = argparse.ArgumentParser(prog="grpo-custom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train the toy length-control task on a tiny local model")
    demo.add_argument("--estimator", default="grpo", help="advantage estimator (see grpo_custom.list_advantage_estimators())")
    demo.add_argument("--steps", type=int, default=60, help="training steps")
    demo.add_argument("--output-dir", default="grpo_custom_demo", help="where the model, logs and reward curve go")
    demo.add_argument("--model", default=None, help="a real model name: runs through Unsloth (needs a CUDA GPU)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)

    vendor = commands.add_parser("vendor", help="write the generated forked trainer to a file for reading")
    vendor.add_argument("--out", required=True, help="output file (or directory)")
    vendor.set_defaults(handler=_vendor)

    diff = commands.add_parser("diff", help="print the unified diff from upstream TRL to the fork")
    diff.set_defaults(handler=_diff)

    doctor = commands.add_parser("doctor", help="versions, CUDA, and whether the fork and the Unsloth patch are active")
    doctor.set_defaults(handler=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``grpo-custom``."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
