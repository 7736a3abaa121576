#!/usr/bin/env bash
# GPU verification of grpo-custom in one command (issue 17), sized for a lent H200 with no network.
#
#   bash scripts/gpu_wheels.sh             here first (registry access): the wheels the GPU image lacks -> .whl/
#   bash scripts/gpu_check.sh              on the device machine, with carry [".whl"]; results in $OUT
#   bash scripts/gpu_check.sh --dry-run    on a CPU: every part in its smoke mode, with ./.venv; CI runs this
#
# Parts, each in its own `timeout`, each capped so the whole run ends within GPU_CHECK_BUDGET_S (default 470 s
# on the GPU) and skipped ("not_run") when too little is left. On the GPU they run in the order install,
# environment, models, step_compare, e2e_step, gpu_tests, bench_loss (the run_part lines below; --print-parts
# prints a call's parts and then its budget in seconds); in a dry run bench_loss comes before gpu_tests:
#   install       pip install --no-index --no-deps --target /tmp/site .whl/*.whl; the tree made importable
#   environment   GPU, driver, CUDA, package versions, measured bf16 matmul rate
#   models        random-weight Qwen2.5-0.5B and -1.5B (real configurations, 151,936-token tokenizer), built locally
#   bench_loss    benchmarks/bench_loss.py --device cuda at B=8, T=1024, H=1536, V=151,936 (with the value-head
#                 rows of value_function, kinds head and shared_head, against their targets)
#   step_compare  grpo-custom's fork vs stock Unsloth: median GRPO step time and peak VRAM, interleaved runs
#   e2e_step      one Unsloth LoRA GRPO step on the 1.5B model: generation tokens/s, update time, MFU
#   gpu_tests     python -m pytest -q -m gpu, on the test files that hold gpu marks (see gpu_tests.py)
# Results, rewritten after every part: $OUT/gpu_check.json (schema: benchmarks/gpu_check/report.py),
# $OUT/gpu_check.md, $OUT/gpu_check.log (every part's output), $OUT/bench_loss_<device>.md.
# GPU_CHECK_PARTS=models,bench_loss,... runs only those parts (install always runs; for a rerun: "models" is
# needed by step_compare and e2e_step). GPU_CHECK_BUDGET_S changes the budget.
# GPU_CHECK_PYTHON overrides the interpreter (default: python3 on the GPU, ./.venv/bin/python in a dry run).
# The exit status is 0 on the GPU whatever the parts' outcomes (they are in the report) unless the report
# itself is invalid; with --dry-run it is non-zero unless the report is valid and every part is ok.
# Measured on an H200 (2026-11-30, unsloth 2026.10.7; benchmarks/results/gpu-h200-2026-11-30.md): install 1 s,
# environment 13 s, models 18 s; bench_loss needs ~200 s wall at 5 repeats (its 130 s cap stopped it); each
# step_compare / e2e_step run spent 22-24 s importing and 4-5 s loading, and its first GRPO step (compile +
# generation) did not finish in the ~55 s left. So all parts do not fit one 470 s call; a lent device's 15
# minutes hold two calls (GPU_CHECK_CALL, or --call N, picks the parts of each):
#   --call 1   environment, models, step_compare (one stock/fork pair at least), e2e_step   (~31 + 275 + 150 s)
#   --call 2   environment, gpu_tests, bench_loss (fewer rows); budget 300 s                  (~13 + 110 + 170 s)
# With a minute or two to start the machine, both fit the 15 device-minutes. Without --call every part runs, in
# the order of the run_part lines below, each within its cap, until the budget is spent.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HERE=benchmarks/gpu_check

MODE=gpu
CALL=${GPU_CHECK_CALL:-}
CALL_BUDGET_S=
PRINT_PARTS=
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) MODE=dry-run ;;
        --call) CALL=${2:-}; shift ;;
        --print-parts) PRINT_PARTS=1 ;;
        *) echo "usage: bash scripts/gpu_check.sh [--dry-run] [--call 1|2] [--print-parts]" >&2; exit 2 ;;
    esac
    shift
done
case "$CALL" in  # a call's parts replace GPU_CHECK_PARTS
    1) GPU_CHECK_PARTS=environment,models,step_compare,e2e_step ;;
    2) GPU_CHECK_PARTS=environment,gpu_tests,bench_loss; CALL_BUDGET_S=300 ;;
    "") ;;
    *) echo "gpu_check.sh: --call (GPU_CHECK_CALL) must be 1 or 2, not '$CALL'" >&2; exit 2 ;;
esac
if [ -n "${PRINT_PARTS:-}" ]; then  # the parts this call would run (besides install) and its GPU budget, then exit
    echo "${GPU_CHECK_PARTS:-environment,models,step_compare,e2e_step,gpu_tests,bench_loss}"
    echo "${GPU_CHECK_BUDGET_S:-${CALL_BUDGET_S:-470}}"
    exit 0
fi

START=$(date +%s)
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXXXX)}  # the device tool sets OUT
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
JSON=$OUT/gpu_check.json
LOG=$OUT/gpu_check.log
: >"$LOG"
RESERVE_S=8

# ---------------------------------------------------------------- environment shared by every part
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export UNSLOTH_DISABLE_STATISTICS=1 DO_NOT_TRACK=1 WANDB_DISABLED=true WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HOME=$WORK/hf XDG_CACHE_HOME=$WORK/cache MPLCONFIGDIR=$WORK/matplotlib
export UNSLOTH_COMPILE_LOCATION=$WORK/unsloth_compiled GRPO_CUSTOM_CACHE_DIR=$WORK/grpo_custom_cache
export TRITON_CACHE_DIR=$WORK/triton TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
if [ "$MODE" = gpu ]; then
    BUDGET_S=${GPU_CHECK_BUDGET_S:-${CALL_BUDGET_S:-470}}
    PY=${GPU_CHECK_PYTHON:-python3}
    SMOKE=()
    unset UNSLOTH_ALLOW_CPU UNSLOTH_COMPILE_DISABLE TORCHDYNAMO_DISABLE
else
    BUDGET_S=${GPU_CHECK_BUDGET_S:-1500}
    PY=${GPU_CHECK_PYTHON:-$ROOT/.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    SMOKE=(--smoke)
    export UNSLOTH_ALLOW_CPU=1 UNSLOTH_COMPILE_DISABLE=1 TORCHDYNAMO_DISABLE=1 CUDA_VISIBLE_DEVICES=""
    export UNSLOTH_GRPO_SEQ_PACKING=0 UNSLOTH_GRPO_PREFIX_GROUPER=0
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi

say() { printf '[%4ds] %s\n' "$(( $(date +%s) - START ))" "$*"; }
report() { "$PY" "$HERE/report.py" "$@" --json "$JSON" >>"$LOG" 2>&1 || say "report.py $1 failed (see $LOG)"; }

# run_part NAME CAP_S MIN_S COMMAND...: runs COMMAND under `timeout`, at most CAP_S and never past the budget;
# "@BUDGET@" in COMMAND becomes the seconds the part may use (a few less than its timeout, so that it can
# write what it has). The part's figures come from $WORK/NAME.json, its output goes to $LOG.
run_part() {
    local name=$1 cap=$2 min=$3
    shift 3
    if [ -n "${GPU_CHECK_PARTS:-}" ] && [ "$name" != install ] && [[ ",$GPU_CHECK_PARTS," != *",$name,"* ]]; then
        report update --part "$name" --status not_run --note "deselected (GPU_CHECK_PARTS=$GPU_CHECK_PARTS)"
        say "part $name: deselected"
        return
    fi
    local left=$(( START + BUDGET_S - RESERVE_S - $(date +%s) ))
    if [ "$left" -lt "$min" ]; then
        report update --part "$name" --status not_run \
            --note "not started: ${left} s left of the ${BUDGET_S} s budget, the part needs at least ${min} s"
        say "part $name: not run (${left} s left)"
        return
    fi
    local limit=$(( cap < left ? cap : left ))
    local args=() arg
    for arg in "$@"; do args+=("${arg//@BUDGET@/$(( limit - 5 ))}"); done
    report update --part "$name" --status not_run --timeout-s "$limit" \
        --note "started at $(date -u +%H:%M:%S) UTC and did not report back (the whole command was stopped?)"
    say "part $name: started (timeout ${limit} s)"
    local began rc status seconds
    began=$(date +%s.%N)
    timeout --kill-after=15 "$limit" "${args[@]}" >"$WORK/$name.log" 2>&1
    rc=$?
    seconds=$(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    { echo "===== part $name: $status (exit $rc, ${seconds} s of ${limit} s) ====="; tail -c 2000000 "$WORK/$name.log"; echo; } >>"$LOG"
    local note=()
    [ "$status" = timeout ] && note=(--note "stopped by its ${limit} s timeout")
    report update --part "$name" --status "$status" --seconds "$seconds" --timeout-s "$limit" \
        --result "$WORK/$name.json" --log "$WORK/$name.log" "${note[@]}"
    say "part $name: $status (${seconds} s)"
}

install_wheels() {
    # GPU: the carried wheels into /tmp/site; a .pth makes /tmp/site visible to processes that reset PYTHONPATH
    # (the gpu tests' scenario subprocess); the tree's own package comes first (install_info.py --link).
    if [ "$MODE" = gpu ]; then
        ls .whl/*.whl >/dev/null || { echo "no .whl/*.whl: run 'bash scripts/gpu_wheels.sh' and carry .whl"; return 1; }
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || return 1
        local site_packages
        site_packages=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
        if printf '%s\n' "import sys; '/tmp/site' in sys.path or sys.path.insert(0, '/tmp/site')" \
            >"$site_packages/zz_grpo_custom_gpu_check.pth" 2>/dev/null; then
            echo "wrote $site_packages/zz_grpo_custom_gpu_check.pth"
        else
            echo "could not write a .pth into $site_packages: subprocesses that reset PYTHONPATH won't see /tmp/site"
        fi
        "$PY" "$HERE/install_info.py" --result "$WORK/install.json" --link
    else
        echo "dry run: packages from $PY"
        if ls .whl/*.whl >/dev/null 2>&1; then  # the carried set installs together (CPython 3.12 wheels, one each)?
            python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site_check" \
                --python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 \
                --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 .whl/*.whl \
                && echo "the .whl set installs for CPython 3.12 (checked into a scratch folder)" || return 1
        fi
        "$PY" "$HERE/install_info.py" --result "$WORK/install.json"
    fi
}

export -f install_wheels
export MODE HERE PY WORK
report init --mode "$MODE" --budget-s "$BUDGET_S"
say "gpu_check ($MODE): budget ${BUDGET_S} s, results in $OUT, scratch in $WORK"
if [ "$MODE" = gpu ]; then
    export PYTHONPATH=$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    run_part install 90 20 bash -c install_wheels
else
    run_part install 120 10 bash -c install_wheels
fi

MODELS=$WORK/models
if [ "$MODE" = gpu ]; then
    run_part environment  60  20 "$PY" "$HERE/env_info.py" --result "$WORK/environment.json"
    run_part models      100  40 "$PY" "$HERE/models.py" --out-dir "$MODELS" --result "$WORK/models.json"
    # caps from the H200 run of 2026-11-30: a GRPO run spends ~30 s importing and loading before its first step,
    # whose compile + generation took over 55 s; bench_loss took ~200 s. All parts do not fit one call: see
    # GPU_CHECK_CALL above (call 1: the step parts; call 2: the gpu tests and bench_loss).
    run_part step_compare 275 150 "$PY" "$HERE/step_compare.py" --model-dir "$MODELS/qwen2.5-0.5b" \
        --result "$WORK/step_compare.json" --work-dir "$WORK/step_compare" --budget-s @BUDGET@
    run_part e2e_step    150  90 "$PY" "$HERE/e2e_step.py" --model-dir "$MODELS/qwen2.5-1.5b" \
        --result "$WORK/e2e_step.json" --work-dir "$WORK/e2e_step" --budget-s @BUDGET@
    run_part gpu_tests   110  45 "$PY" "$HERE/gpu_tests.py" --result "$WORK/gpu_tests.json" --budget-s @BUDGET@
    run_part bench_loss  250  60 "$PY" "$HERE/bench_loss_part.py" --result "$WORK/bench_loss.json" \
        --report "$OUT/bench_loss_cuda.md"
else
    run_part environment  120 5 "$PY" "$HERE/env_info.py" --result "$WORK/environment.json" "${SMOKE[@]}"
    run_part models       180 5 "$PY" "$HERE/models.py" --out-dir "$MODELS" --result "$WORK/models.json" "${SMOKE[@]}"
    run_part step_compare 400 5 "$PY" "$HERE/step_compare.py" --model-dir "$MODELS/qwen2.5-0.5b" \
        --result "$WORK/step_compare.json" --work-dir "$WORK/step_compare" --budget-s @BUDGET@ "${SMOKE[@]}"
    run_part e2e_step     300 5 "$PY" "$HERE/e2e_step.py" --model-dir "$MODELS/qwen2.5-1.5b" \
        --result "$WORK/e2e_step.json" --work-dir "$WORK/e2e_step" --budget-s @BUDGET@ "${SMOKE[@]}"
    run_part bench_loss   300 5 "$PY" "$HERE/bench_loss_part.py" --result "$WORK/bench_loss.json" \
        --report "$OUT/bench_loss_smoke.md" "${SMOKE[@]}"
    run_part gpu_tests    300 5 "$PY" "$HERE/gpu_tests.py" --result "$WORK/gpu_tests.json" --budget-s @BUDGET@ \
        "${SMOKE[@]}"
fi

report finish
[ -n "${GPU_CHECK_KEEP_WORK:-}" ] || rm -rf "$WORK"  # GBs of random weights among it
echo
"$PY" "$HERE/report.py" summary --json "$JSON" 2>&1 | tail -c 9000
echo
if [ "$MODE" = dry-run ]; then
    "$PY" "$HERE/report.py" validate --json "$JSON" --require-ok
else
    "$PY" "$HERE/report.py" validate --json "$JSON"
fi
rc=$?
say "gpu_check done: $JSON, $OUT/gpu_check.md, $LOG"
exit $rc
