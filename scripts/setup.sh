#!/usr/bin/env bash
# Create or reuse a venv and install grpo-custom into it.
#   bash scripts/setup.sh               ./.venv: the package, with Unsloth where a CUDA GPU is present (`grpo-custom demo`)
#   bash scripts/setup.sh --test        ./.venv: also the test tools and Unsloth (its GPU code path is tested on CPU too)
#   bash scripts/setup.sh --compat SET  ./.venv-compat/SET: the test tools and the versions of support-matrix set SET
#   bash scripts/setup.sh --compat-tests   print the compat test subset (what CI's compat job runs per set:
#                                          the tests that touch upstream, not the whole suite)
# Versions come from grpo_custom/fork/support_matrix.json: ./.venv gets its default set, a compat venv its set.
# Without a CUDA GPU it installs the CPU build of torch and keeps it pinned (pip would otherwise pull
# CUDA wheels), and removes torchvision, whose CUDA build breaks `import transformers` on CPU torch.
# A stamp file skips the install when nothing it depends on changed.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=main
venv=.venv
set_name=
case "${1:-}" in
    --test) mode=test ;;
    --compat) mode=compat; set_name=${2:?"--compat needs a set name: python3 grpo_custom/fork/versions.py sets"}
              venv=".venv-compat/$set_name" ;;
    # the tests that touch upstream (the fork's edits, the matrix, Unsloth's loss): CI's compat job runs only these
    # per other set, so the whole CI stays within 60 minutes on 2 cores
    --compat-tests) echo "tests/fork/test_fork.py tests/fork/test_support_matrix.py tests/fork/test_trainer.py" \
                         "tests/unsloth/test_unsloth_fast_path.py tests/unsloth/test_entropy_kernel.py"; exit 0 ;;
esac
python=${PYTHON:-python3}
torch_cpu_version=2.13.0
versions="$python grpo_custom/fork/versions.py"
if [ "$mode" = compat ]; then
    pins=$($versions requirements "$set_name")
else
    pins=$($versions requirements "$($versions default)")
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; else gpu=0; fi
if [ "$mode" = test ] || [ "$gpu" = 1 ]; then extras="unsloth"; else extras=""; fi
if [ "$mode" = test ]; then extras="${extras:+$extras,}test"; fi
if [ "$mode" = compat ]; then extras="test"; fi  # the set's own unsloth pins replace the extra's

mkdir -p "$(dirname "$venv")"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.grpo_custom_setup_${mode}_gpu${gpu}"
fingerprint=$(cat pyproject.toml scripts/setup.sh grpo_custom/fork/support_matrix.json | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then
    exit 0
fi

pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
target=".${extras:+[$extras]}"
constraints="$venv/constraints.txt"
# trl (and unsloth / unsloth_zoo) exactly as the set says; the other extra dependencies come from pyproject
echo "$pins" | grep '^trl==' > "$constraints"
extra_requirements=()
if [ "$mode" = compat ] && echo "$pins" | grep -q '^unsloth=='; then
    mapfile -t extra_requirements < <(echo "$pins" | grep -v '^trl==')
    extra_requirements+=("bitsandbytes>=0.45")
fi
if [ "$gpu" = 1 ]; then
    "${pip[@]}" -c "$constraints" -e "$target" "${extra_requirements[@]}"
else
    echo "torch==$torch_cpu_version" >> "$constraints"
    "${pip[@]}" "torch==$torch_cpu_version"
    "${pip[@]}" -c "$constraints" -e "$target" "${extra_requirements[@]}"
    "$venv/bin/python" -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
fi
echo "$fingerprint" > "$stamp"
