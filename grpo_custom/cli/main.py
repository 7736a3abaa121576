"""The ``grpo-custom`` command line: ``demo``, ``vendor``, ``diff``, ``doctor``, ``compare`` and ``search``."""
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
    report.import_output[:0] = getattr(args, "import_output", [])  # printed while the parser imported them
    print(report.text())
    return 0 if report.healthy else 1


def _experiment(args) -> int:
    from grpo_custom.experiments.commands import run_compare_command, run_search_command

    return (run_compare_command if args.command == "compare" else run_search_command)(args.config)


def _demo(args) -> int:
    from grpo_custom.cli.demo import DemoError, run_demo

    try:
        run_demo(estimator=args.estimator, steps=args.steps, output_dir=args.output_dir, model_name=args.model,
                 seed=args.seed, log_every=args.log_every)
    except DemoError as error:  # a user mistake: one line, no traceback
        print(f"grpo-custom demo: error: {error}", file=sys.stderr)
        return 2
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``grpo-custom demo: error: ... (see grpo-custom demo --help)``)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``grpo-custom``."""
    parser = _Parser(prog="grpo-custom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from grpo_custom.algorithms.estimators import list_advantage_estimators

    demo = commands.add_parser("demo", help="train the toy length-control task on a tiny local model")
    demo.add_argument("--estimator", default="grpo", choices=list_advantage_estimators(), metavar="NAME",
                      help="advantage estimator: %(choices)s (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=60, help="training steps (default: %(default)s)")
    demo.add_argument("--log-every", type=int, default=10, metavar="N",
                      help="print a compact line every N steps (default: %(default)s); every step goes to the log file")
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

    for name, what in (("compare", "run every variant on every seed and write report.json, report.md and plots"),
                       ("search", "search hyperparameters with Optuna (resumable) and write the best variant")):
        experiment = commands.add_parser(name, help=f"{what} (docs/experiments.md)")
        experiment.add_argument("config", metavar="CONFIG.yaml", help="the experiment file (docs/experiments.md)")
        experiment.set_defaults(handler=_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``grpo-custom``."""
    from grpo_custom.cli.doctor import captured_output

    import_output: list[str] = []
    with captured_output(import_output):  # the parser imports torch/TRL, whose imports print (torchao, Unsloth)
        parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler is _doctor:
        args.import_output = import_output  # printed after doctor's verdict
    elif import_output:
        print("\n".join(import_output), file=sys.stderr)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
