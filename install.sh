#!/usr/bin/env bash
# One-command install: a .venv with the pinned kit (every extra), plus Debian's Chromium for the
# browser test.
#   ./install.sh              install (re-running it is safe)
#   ./install.sh --if-needed  only when .venv is missing or the pins (pyproject.toml) changed;
#                             train.sh, predict.sh, test.sh and dashboard.sh call this on every start
set -euo pipefail
cd "$(dirname "$0")"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
STAMP=.venv/.galaxylib-installed
wanted="$(cat pyproject.toml install.sh | sha256sum | cut -d' ' -f1)"
installed() { [ -x .venv/bin/python ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$wanted" ]; }
if [ "${1:-}" = "--if-needed" ] && installed; then exit 0; fi
# One install at a time: the tasks of a Slurm array may all arrive here together. The others wait,
# then find it done.
if command -v flock >/dev/null; then
  exec 9>.install.lock
  flock 9
  if [ "${1:-}" = "--if-needed" ] && installed; then exit 0; fi
fi
if [ "${1:-}" = "--if-needed" ]; then
  echo "Installing the kit into .venv (first use, or the pinned dependencies changed)..." >&2
fi
command -v "$PYTHON_BIN" >/dev/null || { echo "install.sh: Python 3.11 is required ($PYTHON_BIN not found); set PYTHON_BIN" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON_BIN" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "Installing Debian's chromium for the browser tests..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "NOTE: the browser test needs Debian's chromium: sudo apt-get install -y chromium" >&2
  fi
fi
.venv/bin/python -c "import galaxylib, tensorflow, ai_edge_litert; print('galaxylib', galaxylib.__version__, '| tensorflow', tensorflow.__version__)" 2>/dev/null >&2
echo "$wanted" > "$STAMP"
echo "Installed into .venv (activate with: source .venv/bin/activate)" >&2
