#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels `scripts/gpu_check.sh` needs on the lent GPU machine
# that its image lacks (Python 3.12, manylinux x86_64, --no-deps, one version of each), and fail if
# they exceed 60 MiB (the device call carries at most 64 MiB, working tree included).
#
#   bash scripts/gpu_wheels.sh          (here, with registry access, after `bash scripts/setup.sh --test`)
#
# Versions: trl, unsloth and unsloth_zoo at the `==` pins of pyproject.toml (or, for a range there, the venv's
# version, which must lie inside it); every other package at the
# version installed in ./.venv (what the test suite passes with). Which packages: the closure of the
# runtime requirements of grpo-custom, trl, unsloth, unsloth_zoo, datasets and deepspeed (for the gpu-marked
# single-GPU ZeRO-3 run, tests/fork/test_sharding.py), for CPython 3.12 on
# Linux x86_64, minus what the GPU image already holds (IMAGE below, from the device notes' package
# list) and minus what the imports there do not need (SKIP below, each with its reason), plus peft and
# fsspec at the tested versions (ALSO below).
#
# Two wheels are slimmed, their RECORD rewritten to match (noted in .whl/MANIFEST.txt):
#   unsloth       without `studio/` (its web UI, ~26 MB; only the `unsloth` CLI's studio commands import it);
#   bitsandbytes  with only the native library for the image's CUDA (GPU_CUDA_TAG, default 130: torch
#                 2.11.0+cu130) and the CPU one (~43 MB -> ~4 MB), so 4-bit loading can run there.
#
# deepspeed is published on PyPI as a source distribution only: it is built here into a pure-python wheel
# (SDIST_ONLY below: `DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation`, its CUDA ops left to be
# JIT-built on first use; ~2 MiB) at the version installed in ./.venv, and installed offline there like the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-60}
GPU_CUDA_TAG=${GPU_CUDA_TAG:-130}
PYTHON=${PYTHON:-.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "gpu_wheels: $PYTHON not found: run 'bash scripts/setup.sh --test' first (versions are read from it)." >&2
    exit 1
fi
if ! git check-ignore -q .whl/x.whl 2>/dev/null; then
    echo "gpu_wheels: .whl/ is not git-ignored (add '/.whl/' to .gitignore): it would travel twice." >&2
    exit 1
fi

# The GPU image's Python packages (device notes, KINDS.md, read 2026-11-17). Present there: never carried.
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

# Required by the metadata but not by any import the check makes there (read in unsloth / unsloth_zoo
# 2026.10.7 and traced with UNSLOTH_ALLOW_CPU=1): each is imported lazily, behind try/except or find_spec.
SKIP="xformers:optional,unsloth-falls-back-to-torch-SDPA,>100MB
torchao:quantization/fp8-paths-only,transformers-checks-availability
diffusers:not-imported
hf-transfer:only-find_spec,unused-offline
tyro:not-imported-by-the-library
structlog:studio/CLI-only
nest-asyncio:vLLM-in-notebooks-only
msgspec:vLLM-LoRA-only
cut-cross-entropy:in-try/except;Unsloth-disables-it-for-torch>=2.8
ipython:in-try/except
triton-windows:Windows-only
mlx:macOS-only
mlx-lm:macOS-only
mlx-vlm:macOS-only"
# On the image, but carried at the tested version: grpo-custom pins peft>=0.21,<0.22 and datasets pins
# fsspec to an upper bound; the image's versions of both are unknown.
ALSO="peft fsspec"
ROOTS="grpo-custom trl unsloth unsloth-zoo datasets deepspeed"
# No wheel on PyPI: built from the sdist at the venv's version, without its native ops. pydantic (and its
# closure) is carried for deepspeed, whose config classes import it.
SDIST_ONLY="deepspeed"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. What to download: name==version lines, from pyproject's pins and the venv's metadata.
IMAGE="$IMAGE" SKIP="$SKIP" ALSO="$ALSO" ROOTS="$ROOTS" "$PYTHON" - >"$tmp/plan.txt" <<'EOF'
import importlib.metadata as md
import os
import re
import sys
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon

target = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
image = {canon(n) for n in os.environ["IMAGE"].split()}
skip = {canon(line.split(":", 1)[0]): line.split(":", 1)[1] for line in os.environ["SKIP"].splitlines() if line}
also = {canon(n) for n in os.environ["ALSO"].split()}

with open("pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)["project"]
pins, ranges = {}, {}
for spec in project["dependencies"] + [r for reqs in project.get("optional-dependencies", {}).values() for r in reqs]:
    req = Requirement(spec)
    exact = [s.version for s in req.specifier if s.operator == "=="]
    if exact:
        pins[canon(req.name)] = exact[0]
    else:
        ranges[canon(req.name)] = req.specifier
for name in ("trl", "unsloth", "unsloth-zoo"):
    if name in pins:
        continue
    try:  # a range in pyproject (the support matrix lists several versions): the venv's, if inside it
        version = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(f"gpu_wheels: pyproject.toml has no '{name}==VERSION' pin and .venv has no {name}")
    if name not in ranges or version not in ranges[name]:
        sys.exit(f"gpu_wheels: .venv has {name} {version}, outside pyproject.toml's '{ranges.get(name, '')}'")
    pins[name] = version


def installed(name):
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


plan, seen, queue, notes = {}, set(), [canon(n) for n in os.environ["ROOTS"].split()] + sorted(also), []
while queue:
    name = queue.pop(0)
    if name in seen:
        continue
    seen.add(name)
    if name in skip:
        notes.append(f"skip {name}: {skip[name].replace('-', ' ')}")
        continue
    if name in image and name not in also:
        continue
    dist = installed(name)
    if name == "grpo-custom":
        plan[name] = "BUILD"
    elif name in pins:
        plan[name] = pins[name]
        if dist is not None and dist.version != pins[name]:
            notes.append(f"WARNING {name}: pyproject pins {pins[name]} but .venv has {dist.version}; "
                         "re-run 'bash scripts/setup.sh --test' so the dependency versions match the pins")
    elif dist is not None:
        plan[name] = dist.version
    else:
        sys.exit(f"gpu_wheels: {name} is needed but not installed in the venv: run 'bash scripts/setup.sh --test'")
    if dist is None:
        continue
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(target):
            continue
        queue.append(canon(req.name))
for note in notes:
    print("#", note)
for name, version in sorted(plan.items()):
    print(f"{name}=={version}")
EOF
grep '^#' "$tmp/plan.txt" | sed 's/^# /gpu_wheels: /' >&2 || true
grep -v '^#' "$tmp/plan.txt" >"$tmp/wanted.txt"

# 2. Download (and build grpo-custom) into a scratch folder, then slim and move into .whl/.
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
           manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
mkdir -p "$tmp/dl"
while IFS= read -r line; do
    name=${line%%==*}; version=${line#*==}
    if [ "$version" = BUILD ]; then
        "$PYTHON" -m pip wheel -q --no-deps --disable-pip-version-check -w "$tmp/dl" . >&2
    elif [[ " $SDIST_ONLY " == *" $name "* ]]; then
        DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-binary="$name" \
            --disable-pip-version-check -w "$tmp/dl" "$name==$version" 2>&1 \
            | grep -v "^WARNING: Location .* is ignored" >&2 || true
        if ! ls "$tmp/dl" | grep -qi "^$name-$version-py3-none-any\.whl$"; then
            echo "gpu_wheels: could not build a pure-python wheel of $name==$version from its sdist" >&2
            exit 1
        fi
    else
        python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${platforms[@]}" -d "$tmp/dl" "$name==$version" 2>&1 \
            | grep -v "^WARNING: Location .* is ignored" >&2 || true
        if ! ls "$tmp/dl" | grep -qi "^$(echo "$name" | sed 's/[-_.]/[-_.]/g')-$version-"; then
            echo "gpu_wheels: no CPython 3.12 manylinux x86_64 wheel downloaded for $name==$version" >&2
            exit 1
        fi
    fi
done <"$tmp/wanted.txt"

GPU_CUDA_TAG="$GPU_CUDA_TAG" "$PYTHON" - "$tmp/dl" >"$tmp/slim.txt" <<'EOF'
"""Rewrite the unsloth and bitsandbytes wheels without the files the check never loads (RECORD kept consistent)."""
import os
import re
import sys
import zipfile
from pathlib import Path

folder = Path(sys.argv[1])
cuda = os.environ["GPU_CUDA_TAG"]
keep_libs = {f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"}
rules = {
    "unsloth-": ("studio/ (the web UI)", lambda p: p.startswith("studio/")),
    "bitsandbytes-": (f"native libraries other than {sorted(keep_libs)}",
                      lambda p: re.fullmatch(r"bitsandbytes/libbitsandbytes_\w+\.(so|dll|dylib)", p) is not None
                      and p.split("/")[-1] not in keep_libs),
}
for wheel in sorted(folder.glob("*.whl")):
    for prefix, (what, drop) in rules.items():
        if not wheel.name.startswith(prefix) or wheel.name.startswith("unsloth_zoo"):
            continue
        before = wheel.stat().st_size
        slim = wheel.with_suffix(".slim")
        dropped = 0
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
            if prefix == "bitsandbytes-" and f"bitsandbytes/libbitsandbytes_cuda{cuda}.so" not in src.namelist():
                sys.exit(f"gpu_wheels: {wheel.name} has no libbitsandbytes_cuda{cuda}.so (set GPU_CUDA_TAG)")
            for info in src.infolist():
                if drop(info.filename):
                    dropped += 1
                    continue
                data = src.read(info.filename)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = [l for l in data.decode().splitlines(keepends=True) if not drop(l.split(",", 1)[0])]
                    data = "".join(lines).encode()
                dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
        slim.replace(wheel)
        print(f"slimmed {wheel.name}: dropped {dropped} files ({what}): "
              f"{before / 2**20:.1f} -> {wheel.stat().st_size / 2**20:.1f} MiB")
EOF

mkdir -p .whl
rm -f .whl/*.whl .whl/MANIFEST.txt
mv "$tmp"/dl/*.whl .whl/
{
    echo "# wheels for scripts/gpu_check.sh (made by scripts/gpu_wheels.sh, $(date -u +%Y-%m-%dT%H:%MZ))"
    echo "# GPU_CUDA_TAG=$GPU_CUDA_TAG"
    sed 's/^/# /' "$tmp/slim.txt"
    grep '^#' "$tmp/plan.txt" || true
    for wheel in .whl/*.whl; do
        echo "$(basename "$wheel") $(stat -c %s "$wheel") $(sha256sum "$wheel" | cut -d' ' -f1)"
    done
} >.whl/MANIFEST.txt

# 3. One version of each, and the size limit.
dupes=$(ls .whl/*.whl | xargs -n1 basename | sed -E 's/-[0-9][^-]*-.*$//' | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
if [ -n "$dupes" ]; then
    echo "gpu_wheels: two versions of: $dupes" >&2
    exit 1
fi
cat "$tmp/slim.txt"
ls -l .whl/*.whl | awk '{printf "%9.2f MiB  %s\n", $5 / 1048576, $9}'
total=$(cat .whl/*.whl | wc -c)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 cat 2>/dev/null | wc -c)
awk -v w="$total" -v t="$tree" -v l="$LIMIT_MIB" 'BEGIN {
    printf "total: %.2f MiB in %s (limit %d MiB); working tree that travels besides: %.2f MiB; together %.2f of 64 MiB\n",
           w / 1048576, ".whl/", l, t / 1048576, (w + t) / 1048576 }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_wheels: the wheels exceed $LIMIT_MIB MiB" >&2
    exit 1
fi
