"""GPU check, part "bench_loss": ``benchmarks/bench_loss.py`` at realistic shapes, its figures as JSON.

    python benchmarks/gpu_check/bench_loss_part.py --result PATH --report PATH [--smoke] [bench_loss options]

GPU: ``bench_loss.py --device cuda --batch 8 --tokens 1024 --hidden 1536 --vocab 151936 --repeats 3
--policy-losses ppo_clip gspo`` (Qwen2.5-1.5B's hidden size and vocabulary; peak CUDA memory and median time of
the chunked GRPO loss's forward + backward per variant; two policy-loss rows only: on the H200 of 2026-11-30
seven variants took ~200 s, and eighteen would not fit the check's second call). ``--smoke`` (CPU): ``--smoke --device cpu --vocab 32000 --repeats 1``.
The markdown report goes to ``--report``; every row and target verdict goes into the result file.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from gpu_check_common import ResultFile

BENCH = Path(__file__).resolve().parent.parent / "bench_loss.py"
GPU_ARGS = ["--device", "cuda", "--batch", "8", "--tokens", "1024", "--hidden", "1536", "--vocab", "151936",
            "--repeats", "3", "--policy-losses", "ppo_clip", "gspo"]
SMOKE_ARGS = ["--smoke", "--device", "cpu", "--vocab", "32000", "--repeats", "1"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", default=None)
    parser.add_argument("--report", required=True)
    parser.add_argument("--smoke", action="store_true")
    options, extra = parser.parse_known_args(argv)
    bench_args = (SMOKE_ARGS if options.smoke else GPU_ARGS) + extra + ["--output", options.report]
    result = ResultFile(options.result)
    result.set("command", "python benchmarks/bench_loss.py " + " ".join(bench_args))
    spec = importlib.util.spec_from_file_location("bench_loss", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_loss"] = bench
    spec.loader.exec_module(bench)
    out = bench.main(bench_args)
    rows = []
    for vocab, by_variant in out["results"].items():
        base = by_variant["base"]
        for name, measured in by_variant.items():
            rows.append({"vocab": vocab, "variant": name, "peak_mib": round(measured.peak_bytes / 2**20, 1),
                         "memory_x_base": round(measured.peak_bytes / base.peak_bytes, 3),
                         "median_ms": round(measured.median_seconds * 1e3, 3),
                         "time_x_base": round(measured.median_seconds / base.median_seconds, 3)})
    checks = [{"vocab": vocab, "check": check, "value": round(value, 3), "target": target, "passed": passed}
              for vocab, check, value, target, passed in out["checks"]]
    header = [line[2:] for line in out["report"].splitlines() if line.startswith("- ")]
    result.update({"rows": rows, "checks": checks, "header": header,
                   "all_targets_pass": all(check["passed"] for check in checks)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
