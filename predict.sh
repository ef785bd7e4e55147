#!/usr/bin/env bash
# Classify cutouts with a trained model (see README.md). Installs into .venv on first use, like
# train.sh; paths are relative to where you run it from.
#   ./predict.sh --model models/<run> IMAGE_OR_DIR_OR_H5 ... [--out predictions.csv]
#   ./predict.sh --model models/<run> --catalog CATALOG --out OUT_DIR [--shard K/N]
#                [--dask local:N | --dask tcp://HOST:PORT] [--to-database]      (docs/catalog.md)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  # the install's messages go to stderr, like predict.sh's own; stdout keeps only the summary
  if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; else "$HERE/install.sh" --if-needed >&2; PY="$HERE/.venv/bin/python"; fi
fi
exec "$PY" -m galaxylib.apps.predict_cli "$@"
