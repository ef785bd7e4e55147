#!/usr/bin/env bash
# Classify cutouts with a trained model (see README.md).
#   ./predict.sh --model models/<run> IMAGE_OR_DIR_OR_H5 ... [--out predictions.csv]
#   ./predict.sh --model models/<run> --catalog CATALOG --out OUT_DIR [--shard K/N]
#                [--dask local:N | --dask tcp://HOST:PORT] [--to-database]      (docs/catalog.md)
set -euo pipefail
PY="${PYTHON:-python}"
HERE="$(cd "$(dirname "$0")" && pwd)"
[ -x "$HERE/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${PYTHON:-}" ] && PY="$HERE/.venv/bin/python"
exec "$PY" -m galaxylib.apps.predict_cli "$@"
