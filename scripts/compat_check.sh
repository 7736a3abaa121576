#!/usr/bin/env bash
# The compat job (CI runs it after the main suite): the tests that touch upstream (`bash scripts/setup.sh
# --compat-tests`: fork edits, support matrix, plain trainer, Unsloth scenarios, entropy kernel) against every
# supported set other than the default, each in its own venv (.venv-compat/<set>, created by
# `scripts/setup.sh --compat` and reused while its inputs are unchanged). Every set runs even when one fails;
# the exit status is non-zero if any set failed, and a table says which.
set -uo pipefail
cd "$(dirname "$0")/.."
summary=()
failed=0
for set in $(python3 grpo_custom/fork/versions.py other-sets); do
    began=$SECONDS
    echo "== compat: $set"
    if ! bash scripts/setup.sh --compat "$set"; then
        summary+=("| $set | venv build failed | $(( SECONDS - began )) s |")
        failed=1
        continue
    fi
    built=$(( SECONDS - began ))
    # shellcheck disable=SC2046  (the subset is a list of paths)
    if ".venv-compat/$set/bin/python" -m pytest -q -m "not slow" $(bash scripts/setup.sh --compat-tests); then
        verdict=passed
    else
        verdict=FAILED
        failed=1
    fi
    summary+=("| $set | $verdict | venv ${built} s, tests $(( SECONDS - began - built )) s |")
done
echo
echo "| compat set | subset | time |"
echo "|---|---|---|"
printf '%s\n' "${summary[@]}"
echo "compat job: ${SECONDS} s"
exit $failed
