#!/usr/bin/env bash
# Run the whole test suite (README's test command; .ci/run calls it). Installs into .venv on first
# use. Extra arguments go to pytest: ./test.sh -m "not slow" for the quick development run.
# Afterwards it checks that the suite left nothing new in the checkout except build output.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then ./install.sh --if-needed; PY=.venv/bin/python; fi
untracked() { git status --porcelain --ignored --untracked-files=all 2>/dev/null \
  | grep -v -E '^(!!|\?\?) (\.venv/|.*__pycache__/|.*\.egg-info/)' | sort || true; }
before="$(untracked)"
status=0
"$PY" -m pytest "$@" || status=$?
new="$(comm -13 <(echo "$before") <(untracked))"
if [ -n "$new" ]; then
  echo "test.sh: the tests wrote into the checkout (they must use temporary folders):" >&2
  echo "$new" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
