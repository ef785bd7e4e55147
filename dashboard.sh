#!/usr/bin/env bash
# Serve the Galaxy10 dashboard: notebooks/dashboard.ipynb rendered by voila.
#
#   ./dashboard.sh [--port N] [--host ADDRESS]
#
# Uses $PYTHON, the active virtual environment, or .venv (installed on first use). The model
# is $MODEL_PATH (relative to where you run this), or the newest run in models/; predictions
# are logged to $DATABASE_URL when the page's toggle is on. voila.json (read from the repository root) sets the upload limit; see
# docs/dashboard.md.
set -euo pipefail

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

port="${DASHBOARD_PORT:-8866}"
host="${DASHBOARD_HOST:-localhost}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) [[ $# -ge 2 ]] || { echo "error: --port needs a number" >&2; exit 2; }; port="$2"; shift 2 ;;
        --port=*) port="${1#--port=}"; shift ;;
        --host) [[ $# -ge 2 ]] || { echo "error: --host needs an address" >&2; exit 2; }; host="$2"; shift 2 ;;
        --host=*) host="${1#--host=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "error: --port must be a number from 1 to 65535, got '$port'" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GALAXY_USER_CWD="${GALAXY_USER_CWD:-$PWD}"  # a relative MODEL_PATH means the folder you typed it in
cd "$root"  # voila reads voila.json from the working directory

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" ]]; then
        python=python
    else
        ./install.sh --if-needed  # .venv on first use
        python="$root/.venv/bin/python"
    fi
fi
if ! "$python" -c "import voila, galaxylib.apps.dashboard" 2>/dev/null; then
    echo "error: $("$python" -c 'import sys; print(sys.executable)' 2>/dev/null || echo "$python") cannot import voila and galaxylib;" >&2
    echo "       activate the project's environment (pip install -e '.[dev]')" >&2
    exit 1
fi

export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

shown_host="$host"
[[ "$host" == "0.0.0.0" || "$host" == "::" ]] && shown_host="localhost"
echo "Galaxy10 dashboard: http://${shown_host}:${port}/"
echo "  model:    ${MODEL_PATH:-newest run in models/}"
echo "  database: ${DATABASE_URL:-data/predictions.db (SQLite)}"
echo "  stop with Ctrl-C"
exec "$python" -m voila notebooks/dashboard.ipynb --no-browser --port="$port" --Voila.ip="$host"
