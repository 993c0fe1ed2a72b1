#!/usr/bin/env bash
# The test command: builds the environment if needed, then runs the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k metrics`).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
