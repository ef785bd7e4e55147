#!/usr/bin/env bash
# Serve the Galaxy10 dashboard: notebooks/dashboard.ipynb rendered by voila.
#
#   ./dashboard.sh [--port N] [--host ADDRESS] [--max-kernels N] [--Class.option=VALUE ...]
#
# --max-kernels caps the visitors at once (one kernel of about 1 GB each; voila.json's
# DashboardKernelManager.max_kernels, 8, by default; 0: no cap); past it a visitor reads "the demo
# is busy". Options written --Class.option=VALUE go to voila as they are, for instance
# --MappingKernelManager.cull_idle_timeout=300. Environment: DASHBOARD_PORT, DASHBOARD_HOST and
# DASHBOARD_MAX_KERNELS stand for the flags.
#
# Uses $PYTHON, the active virtual environment, or .venv (installed on first use). The model
# is $MODEL_PATH (relative to where you run this), or the newest run in models/; predictions
# are logged to $DATABASE_URL when the page's toggle is on. voila.json (read from the repository
# root) sets the upload limit and frees the kernels of closed pages; see docs/dashboard.md.
set -euo pipefail

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

port="${DASHBOARD_PORT:-8866}"
host="${DASHBOARD_HOST:-localhost}"
max_kernels="${DASHBOARD_MAX_KERNELS:-}"  # empty: voila.json's
voila_options=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) [[ $# -ge 2 ]] || { echo "error: --port needs a number" >&2; exit 2; }; port="$2"; shift 2 ;;
        --port=*) port="${1#--port=}"; shift ;;
        --host) [[ $# -ge 2 ]] || { echo "error: --host needs an address" >&2; exit 2; }; host="$2"; shift 2 ;;
        --host=*) host="${1#--host=}"; shift ;;
        --max-kernels) [[ $# -ge 2 ]] || { echo "error: --max-kernels needs a number" >&2; exit 2; }; max_kernels="$2"; shift 2 ;;
        --max-kernels=*) max_kernels="${1#--max-kernels=}"; shift ;;
        --[A-Z]*.*=*) voila_options+=("$1"); shift ;;  # a voila / jupyter_server option, passed on
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "error: --port must be a number from 1 to 65535, got '$port'" >&2
    exit 2
fi
if [[ -n "$max_kernels" ]]; then
    if ! [[ "$max_kernels" =~ ^[0-9]+$ ]]; then
        echo "error: --max-kernels must be a whole number (0: no cap), got '$max_kernels'" >&2
        exit 2
    fi
    voila_options+=("--DashboardKernelManager.max_kernels=$max_kernels")
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
# A taken port is a one-line error here: voila would log "trying another port" and then stop,
# since voila.json's port_retries is 0 (the printed URL must be the one served).
"$python" -m galaxylib.apps.dashboard.server check-port "$host" "$port" || exit 2

export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

shown_host="$host"
[[ "$host" == "0.0.0.0" || "$host" == "::" ]] && shown_host="localhost"
echo "Galaxy10 dashboard: http://${shown_host}:${port}/"
echo "  model:    ${MODEL_PATH:-newest run in models/}"
echo "  database: ${DATABASE_URL:-data/predictions.db (SQLite)}"
echo "  stop with Ctrl-C"
exec "$python" -m voila notebooks/dashboard.ipynb --no-browser --port="$port" --Voila.ip="$host" ${voila_options[@]+"${voila_options[@]}"}
