#!/usr/bin/env bash
# Train, evaluate and test a model as executed notebooks (see README.md).
#   ./train.sh [--config FILE.yaml] [--dataset synthetic|real|PATH.h5|IMAGE_DIR] [--run-name NAME] [-p KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" -m galaxylib.runner "$@"
