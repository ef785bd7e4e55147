"""The architecture is checked, not kept by habit.

- import-linter's contracts (pyproject.toml) hold: serving never imports TensorFlow or Keras,
  nor SciPy or scikit-learn (the fits live in galaxylib.fitting); the layers only import
  downwards; no two sibling modules import each other, directly or round a circle; the core
  modules stand alone.
- They can fail: the same check on a copy with a TensorFlow import on the inference path, a fit
  in the inference package, or an import circle inside galaxylib.modeling is broken.
- ruff's lint and format checks pass on the whole checkout (pyproject.toml's settings).
- The ``serve`` extra alone, in a fresh virtual environment, has no TensorFlow and serves a
  real cutout under gunicorn.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxylib.config import PROJECT_ROOT

BIN = Path(sys.executable).parent
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "galaxylib", "serve")


def copy_project(dest: Path) -> Path:
    """The package's sources, as a fresh clone would have them (no caches, no build output)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_FILES:
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_import_contracts_hold():
    run = lint_imports(PROJECT_ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 kept, 0 broken" in run.stdout


SHORTCUTS = {
    "a TensorFlow import on the inference path": (
        "galaxylib/inference/predictor.py",
        "\nimport tensorflow  # a shortcut someone might take\n",
        "Serving never imports TensorFlow or Keras BROKEN",
        "galaxylib.inference.predictor -> tensorflow",
    ),
    "a SciPy fit in the serving package": (
        "galaxylib/inference/calibration.py",
        "\n\ndef refit(probs):\n    from scipy.optimize import minimize_scalar\n\n    return minimize_scalar(len)\n",
        "Serving never imports the fitting libraries (SciPy, scikit-learn) BROKEN",
        "galaxylib.inference.calibration -> scipy",
    ),
    "the training side's fits called from the Predictor": (
        "galaxylib/inference/predictor.py",
        "\nfrom galaxylib.fitting.ood_fit import threshold_for\n",
        "Serving never imports the fitting libraries (SciPy, scikit-learn) BROKEN",
        "galaxylib.inference.predictor -> galaxylib.fitting.ood_fit",
    ),
    "an import circle inside modeling": (
        "galaxylib/modeling/loading.py",
        "\n\ndef start_of(path):\n    from galaxylib.modeling.model import describe_weights\n\n"
        "    return describe_weights(path)\n",
        "No import circles between sibling modules BROKEN",
        "- .model -> .loading",
    ),
}


@pytest.mark.parametrize("shortcut", list(SHORTCUTS))
def test_each_contract_breaks_when_the_shortcut_it_forbids_is_taken(tmp_path, shortcut):
    relative, added, broken, chain = SHORTCUTS[shortcut]
    copy = copy_project(tmp_path / "src")
    module = copy / relative
    module.write_text(module.read_text() + added)

    run = lint_imports(copy, pythonpath=copy)

    assert run.returncode != 0, run.stdout
    assert broken in run.stdout, run.stdout
    assert chain in run.stdout, run.stdout


def test_the_code_passes_ruff_lint_and_format_checks():
    """ruff (pyproject.toml's [tool.ruff]) over the whole checkout: bench, notebooks, tests too."""
    for command in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        run = subprocess.run(
            [str(BIN / "ruff"), *command], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, f"ruff {' '.join(command)}:\n{run.stdout}{run.stderr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_serve_extra_alone_serves_a_real_cutout_without_tensorflow(tmp_path, tiny_artifact, sample_files):
    import requests

    src = copy_project(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{src}[serve]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    (tmp_path / "src").rename(tmp_path / "src-moved")  # the installed copy must stand alone

    no_tf = subprocess.run([str(py), "-c", "import tensorflow"], capture_output=True, text=True, timeout=60)
    assert no_tf.returncode != 0 and "No module named 'tensorflow'" in no_tf.stderr
    assert subprocess.run([str(py), "-c", "import keras"], capture_output=True, timeout=60).returncode != 0

    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        MODEL_PATH=str(tiny_artifact), DATABASE_URL=f"sqlite:///{tmp_path / 'predictions.db'}", GALAXY_NUM_THREADS="1"
    )
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(venv / "bin" / "gunicorn"), "--workers", "1", "--bind", f"127.0.0.1:{port}", "serve.app:app"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "gunicorn never became healthy:\n" + log.read_text()[-3000:]
            time.sleep(0.5)
        cutout = sample_files[0]
        response = requests.post(f"{url}/predict", files={"file": (cutout.name, cutout.read_bytes())}, timeout=60)
        assert response.status_code == 200, response.text
        [answer] = response.json()["predictions"]
        assert answer["filename"] == cutout.name and answer["prediction_id"] >= 1
        assert answer["predicted_class"] in answer["probabilities"]
        served_from = subprocess.run(
            [str(py), "-c", "import serve, galaxylib; print(serve.__file__, galaxylib.__file__)"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert str(venv) in served_from and str(PROJECT_ROOT) not in served_from
    finally:
        server.terminate()
        server.wait(timeout=30)
