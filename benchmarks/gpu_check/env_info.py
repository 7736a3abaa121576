"""GPU check, part "environment": GPU, driver, CUDA, package versions, and the measured bf16 matmul rate.

    python benchmarks/gpu_check/env_info.py --result PATH [--smoke]

``--smoke`` (CPU): the same report without a GPU (no matmul rate).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

from gpu_check_common import ResultFile, bitsandbytes_native, configure_environment, package_versions

PACKAGES = ("torch", "triton", "transformers", "trl", "unsloth", "unsloth_zoo", "peft", "accelerate", "datasets",
            "bitsandbytes", "xformers", "vllm", "tokenizers", "huggingface_hub", "numpy", "grpo-custom")


def nvidia_smi() -> dict:
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    try:
        completed = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": str(error)}
    if completed.returncode != 0:
        return {"error": completed.stderr.strip()[-500:]}
    fields = [field.strip() for field in completed.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(query.split(","), fields))


def matmul_tflops(torch, size: int = 8192, repeats: int = 20) -> float:
    """Median bf16 matmul rate (TFLOP/s) on random data, timed with CUDA events."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * size**3 / times[len(times) // 2] / 1e12


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", default=None)
    parser.add_argument("--smoke", action="store_true")
    options = parser.parse_args(argv)
    configure_environment(options.smoke)
    result = ResultFile(options.result)
    result.update({"python": platform.python_version(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "versions": package_versions(PACKAGES)})
    import torch

    result.update({"torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()})
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        result.update({"gpu_name": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
                       "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
                       "compute_capability": f"{properties.major}.{properties.minor}",
                       "nvidia_smi": nvidia_smi()})
        result.set("driver", result.figures["nvidia_smi"].get("driver_version"))
        result.set("matmul_bf16_tflops_8192", round(matmul_tflops(torch), 1))
    else:
        result.update({"gpu_name": "none (CPU)", "driver": None})
        if not options.smoke:
            result.note("no CUDA device visible")
            sys.exit(1)
    usable, detail = bitsandbytes_native()  # 4-bit loading and Unsloth's 8-bit AdamW need it
    result.set("bitsandbytes_native", detail if usable else f"unusable: {detail}")
    for key, value in result.figures.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
