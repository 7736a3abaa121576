#!/usr/bin/env bash
# The compat job: the tests that touch upstream (`bash scripts/setup.sh --compat-tests`: fork edits, support
# matrix, plain trainer, Unsloth scenarios, entropy kernel) against every supported set other than the default,
# each in its own venv (.venv-compat/<set>, created by `scripts/setup.sh --compat` and reused while its inputs
# are unchanged). Not yet part of .ci/run: its duration on an idle 2-core machine is unmeasured.
set -euo pipefail
cd "$(dirname "$0")/.."
for set in $(python3 grpo_custom/fork/versions.py other-sets); do
    echo "== compat: $set"
    bash scripts/setup.sh --compat "$set"
    # shellcheck disable=SC2046  (the subset is a list of paths)
    ".venv-compat/$set/bin/python" -m pytest -q -m "not slow" $(bash scripts/setup.sh --compat-tests)
    echo "== compat: $set done, ${SECONDS}s since the job started"
done
