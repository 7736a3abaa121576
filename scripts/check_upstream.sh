#!/usr/bin/env bash
# Release-day check (what a maintainer runs the day Unsloth or TRL releases):
#   bash scripts/check_upstream.sh
# Asks the registry (pip index) for the newest trl, unsloth and unsloth_zoo, builds one venv with the newest
# unsloth + unsloth_zoo (and the trl they resolve to) and one with the newest trl alone (the plain fork), runs
# the compat subset in each with GRPO_CUSTOM_ALLOW_UNTESTED_VERSIONS=1, and prints a verdict table. A version
# that passes goes into grpo_custom/fork/support_matrix.json (with the sha256 of TRL's grpo_trainer.py).
# Venvs are kept under .venv-compat/upstream-* (ignored by git); logs under .venv-compat/upstream-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_cpu_version=2.13.0
compat_tests=$(bash scripts/setup.sh --compat-tests)

newest() {  # newest version of $1 the configured registry offers
    "$python" -m pip index versions "$1" 2>/dev/null | sed -n 's/^[^ ]* (\([^)]*\))$/\1/p' | head -1
}
in_matrix() {  # "yes" when version $2 of package $1 appears in a supported set
    "$python" - "$1" "$2" <<'EOF'
import json, sys
matrix = json.load(open("grpo_custom/fork/support_matrix.json"))
print("yes" if any(s.get(sys.argv[1]) == sys.argv[2] for s in matrix["sets"].values()) else "no")
EOF
}

trl=$(newest trl); unsloth=$(newest unsloth); zoo=$(newest unsloth_zoo)
[ -n "$trl" ] && [ -n "$unsloth" ] && [ -n "$zoo" ] || { echo "check_upstream: the registry did not answer" >&2; exit 2; }

build() {  # build NAME REQUIREMENT...: a venv with CPU torch pinned, grpo-custom[test] and the requirements
    local name=$1; shift
    local venv=".venv-compat/upstream-$name"
    rm -rf "$venv"; mkdir -p .venv-compat
    "$python" -m venv "$venv"
    echo "torch==$torch_cpu_version" > "$venv/constraints.txt"
    local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" "torch==$torch_cpu_version"
    "${pip[@]}" -c "$venv/constraints.txt" -e ".[test]" "$@"
    "$venv/bin/python" -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
}
run() {  # run NAME: the compat subset in that venv; prints PASS/FAIL
    local venv=".venv-compat/upstream-$1"
    if GRPO_CUSTOM_ALLOW_UNTESTED_VERSIONS=1 "$venv/bin/python" -m pytest -q -x $compat_tests \
            > ".venv-compat/upstream-$1.log" 2>&1; then echo PASS; else echo FAIL; fi
}
resolved() { ".venv-compat/upstream-$1/bin/python" -c "import importlib.metadata as m; print(m.version('$2'))"; }

verdict_unsloth=BUILD-FAILED; verdict_trl=BUILD-FAILED
if build unsloth "unsloth==$unsloth" "unsloth_zoo==$zoo" "bitsandbytes>=0.45" > .venv-compat/upstream-unsloth.build.log 2>&1; then
    verdict_unsloth=$(run unsloth)
fi
if build trl "trl==$trl" > .venv-compat/upstream-trl.build.log 2>&1; then
    verdict_trl=$(run trl)
fi
unsloth_trl=$(resolved unsloth trl 2>/dev/null || echo "?")

echo
echo "| venv | package | newest | in support matrix | compat subset |"
echo "|---|---|---|---|---|"
echo "| upstream-unsloth | unsloth | $unsloth | $(in_matrix unsloth "$unsloth") | $verdict_unsloth |"
echo "| upstream-unsloth | unsloth_zoo | $zoo | $(in_matrix unsloth_zoo "$zoo") | $verdict_unsloth |"
echo "| upstream-unsloth | trl (resolved under unsloth) | $unsloth_trl | $(in_matrix trl "$unsloth_trl") | $verdict_unsloth |"
echo "| upstream-trl | trl (plain fork) | $trl | $(in_matrix trl "$trl") | $verdict_trl |"
echo
echo "logs: .venv-compat/upstream-{unsloth,trl}.log (tests), .venv-compat/upstream-*.build.log (installs)"
[ "$verdict_unsloth" = PASS ] && [ "$verdict_trl" = PASS ]
