#!/usr/bin/env bash
# Train, evaluate and test a model as executed notebooks (see README.md). Installs into .venv on
# first use. Paths you pass (--config, --dataset) are relative to where you run it from.
#   ./train.sh [--config FILE.yaml] [--dataset synthetic|real|PATH.h5|IMAGE_DIR|CATALOGUE.parquet] [--run-name NAME] [-p KEY VALUE ...]
set -euo pipefail
export GALAXY_USER_CWD="${GALAXY_USER_CWD:-$PWD}"
cd "$(dirname "$0")"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; else ./install.sh --if-needed; PY=.venv/bin/python; fi
fi
exec "$PY" -m galaxylib.pipeline.runner "$@"
