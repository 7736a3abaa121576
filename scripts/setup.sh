#!/usr/bin/env bash
# Create or reuse ./.venv and install grpo-custom into it.
#   bash scripts/setup.sh          the package, with Unsloth where a CUDA GPU is present (for `grpo-custom demo`)
#   bash scripts/setup.sh --test   also the test tools and Unsloth (its GPU code path is tested on CPU too)
# Without a CUDA GPU it installs the CPU build of torch and keeps it pinned (pip would otherwise pull
# CUDA wheels), and removes torchvision, whose CUDA build breaks `import transformers` on CPU torch.
# A stamp file skips the install when nothing it depends on changed.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=main
if [ "${1:-}" = "--test" ]; then mode=test; fi
python=${PYTHON:-python3}
torch_cpu_version=2.13.0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; else gpu=0; fi
if [ "$mode" = test ] || [ "$gpu" = 1 ]; then extras="unsloth"; else extras=""; fi
if [ "$mode" = test ]; then extras="${extras:+$extras,}test"; fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.grpo_custom_setup_${mode}_gpu${gpu}"
fingerprint=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then
    exit 0
fi

pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
target=".${extras:+[$extras]}"
if [ "$gpu" = 1 ]; then
    "${pip[@]}" -e "$target"
else
    constraints=.venv/constraints-cpu.txt
    echo "torch==$torch_cpu_version" > "$constraints"
    "${pip[@]}" "torch==$torch_cpu_version"
    "${pip[@]}" -c "$constraints" -e "$target"
    .venv/bin/python -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
fi
echo "$fingerprint" > "$stamp"
