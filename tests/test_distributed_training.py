"""Training on several devices and machines (train.strategy), and an artifact that is whole or absent.

- ``mirrored`` on 2 logical CPU devices (``train.cpu_devices 2``) and ``multi_worker`` with two
  local processes and a ``TF_CONFIG`` each train end to end through ./train.sh; the artifact
  records the strategy and the replicas, and serves like any other.
- BatchNormalization that trains is synchronised: two replicas step exactly as one device on
  their global batch does.
- A bad strategy or an impossible device count is refused before any work.
- A run killed in the middle of 02_train leaves no models/<run> that predict.sh accepts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxylib.config import PROJECT_ROOT

TINY = ["--config", "configs/tiny.yaml", "--dataset", "synthetic"]
# BatchNormalization frozen keeps the traced step small (synchronised BN costs minutes of tracing
# on a CPU); test_synchronised_batchnorm_steps_two_replicas_as_one_device_on_the_global_batch covers it.
QUICK_TRACE = ["-p", "model.freeze_batchnorm", "true"]


def train_sh(tmp_path: Path, run: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    command = [
        str(PROJECT_ROOT / "train.sh"),
        *TINY,
        "--run-name",
        run,
        "--reports-root",
        str(tmp_path / "reports"),
        "--models-root",
        str(tmp_path / "models"),
        *args,
    ]
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **(env or {}),
    }
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, **kwargs)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def predict_sh(model: Path, tmp_path: Path, sample_files) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"}
    return subprocess.run(
        [
            str(PROJECT_ROOT / "predict.sh"),
            "--model",
            str(model),
            str(sample_files[0]),
            "--out",
            str(tmp_path / "p.csv"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    "params, message",
    [
        (["-p", "train.strategy", "ring"], "train.strategy must be one of one, mirrored, multi_worker"),
        (["-p", "train.strategy", "mirrored", "-p", "train.cpu_devices", "1"], "has one replica"),
        (["-p", "train.strategy", "multi_worker", "-p", "train.max_train_minutes", "0"], "needs the cluster"),
        (["-p", "train.strategy", "mirrored", "-p", "train.mode", "head"], "use train.strategy one"),
        (["-p", "train.cpu_devices", "-1"], "train.cpu_devices must be 0"),
    ],
)
def test_a_strategy_that_cannot_run_is_refused_before_any_work(tmp_path, params, message):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")}
    run = subprocess.run(
        [
            str(PROJECT_ROOT / "train.sh"),
            *TINY,
            "--run-name",
            "refused",
            "--reports-root",
            str(tmp_path / "r"),
            *params,
        ],
        capture_output=True,
        text=True,
        env={**env, "PYTHON": sys.executable},
        cwd=PROJECT_ROOT,
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


def test_a_wall_clock_budget_is_refused_across_machines(monkeypatch):
    from galaxylib.modeling.distribute import StrategyError, check_strategy

    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
    )
    with pytest.raises(StrategyError, match="max_train_minutes 0"):
        check_strategy("multi_worker", 0, 32, max_train_minutes=6)
    check_strategy("multi_worker", 0, 32, max_train_minutes=0)


def test_the_cluster_and_the_chief_come_from_tf_config_or_slurm(monkeypatch):
    from galaxylib.modeling.distribute import cluster_from_environment

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert cluster_from_environment() is None
    cluster = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert cluster_from_environment() == ("TF_CONFIG", 1, 3)  # task 1 of 3: not the chief
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert cluster_from_environment() == ("TF_CONFIG", 0, 3)  # the chief is task 0
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert cluster_from_environment() == ("Slurm", 3, 4)


SYNC_BN_SCRIPT = """
import json, sys
import numpy as np
from galaxylib.modeling.distribute import make_placement, synchronise_batchnorm
from galaxylib.modeling.fused_batchnorm import fused_batchnorm
import keras, tensorflow as tf

placement = make_placement("mirrored", cpu_devices=2, batch_size=16)
x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]
y = np.arange(16) % 4
# replica 0 gets the first half of the batch, replica 1 the second: halves with different statistics
x[8:] += 4.0


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.5, name="bn")(h)
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return model


with placement.strategy.scope():
    mirrored = build()
one = build()
synchronise_batchnorm(mirrored, sys.argv[1] == "sync")
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
with fused_batchnorm(True):
    mirrored.fit(data, epochs=1, verbose=0, shuffle=False)
    one.fit(data, epochs=1, verbose=0, shuffle=False)
bn_m, bn_o = mirrored.get_layer("bn"), one.get_layer("bn")
print(json.dumps({
    "replicas": placement.replicas,
    "moving_mean": float(np.abs(bn_m.moving_mean.numpy() - bn_o.moving_mean.numpy()).max()),
    "moving_variance": float(np.abs(bn_m.moving_variance.numpy() - bn_o.moving_variance.numpy()).max()),
    "kernel": float(np.abs(mirrored.get_layer("conv").kernel.numpy() - one.get_layer("conv").kernel.numpy()).max()),
}))
"""


@pytest.mark.slow
def test_synchronised_batchnorm_steps_two_replicas_as_one_device_on_the_global_batch():
    def run(mode: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", SYNC_BN_SCRIPT, mode],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    synced = run("sync")
    assert synced["replicas"] == 2
    assert synced["moving_mean"] < 1e-5 and synced["moving_variance"] < 1e-4 and synced["kernel"] < 1e-5
    local = run("local")  # each replica's own half: the statistics, and so the step, differ
    assert local["moving_mean"] > 0.1


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_trains_end_to_end_and_records_it(tmp_path, sample_files):
    run = train_sh(
        tmp_path,
        "mirrored",
        "-p",
        "train.strategy",
        "mirrored",
        "-p",
        "train.cpu_devices",
        "2",
        *QUICK_TRACE,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    model = tmp_path / "models" / "mirrored"
    sidecar = json.loads((model / "model.json").read_text())
    assert sidecar["metrics"]["strategy"] == "mirrored" and sidecar["metrics"]["replicas"] == 2
    metrics = json.loads((tmp_path / "reports" / "mirrored" / "metrics.json").read_text())
    assert metrics["strategy"] == "mirrored" and metrics["replicas"] == 2
    assert sidecar["calibration"] and sidecar["ood"]  # the same artifact as one device
    classified = predict_sh(model, tmp_path, sample_files)
    assert classified.returncode == 0, classified.stderr


@pytest.mark.slow
def test_multi_worker_with_two_local_processes_trains_and_only_the_chief_writes(tmp_path, sample_files):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    args = ["-p", "train.strategy", "multi_worker", "-p", "train.max_train_minutes", "0", *QUICK_TRACE]

    def worker(index: int) -> dict:
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}

    worker_out = tmp_path / "worker.log"
    with open(worker_out, "w") as log:
        env = {**os.environ, "PYTHON": sys.executable, **worker(1)}
        second = subprocess.Popen(
            [
                str(PROJECT_ROOT / "train.sh"),
                *TINY,
                "--run-name",
                "mw",
                "--reports-root",
                str(tmp_path / "worker-reports"),
                "--models-root",
                str(tmp_path / "worker-models"),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=PROJECT_ROOT,
        )
        try:
            chief = train_sh(tmp_path, "mw", *args, env=worker(0), timeout=1200)
            assert second.wait(timeout=300) == 0, worker_out.read_text()[-3000:]
        finally:
            if second.poll() is None:
                second.kill()
    assert chief.returncode == 0, chief.stdout[-3000:] + chief.stderr[-3000:]
    assert "Worker 1: done after" in worker_out.read_text()
    assert not (tmp_path / "worker-reports").exists() and not (tmp_path / "worker-models").exists()
    sidecar = json.loads((tmp_path / "models" / "mw" / "model.json").read_text())
    assert sidecar["metrics"]["strategy"] == "multi_worker" and sidecar["metrics"]["replicas"] == 2
    assert predict_sh(tmp_path / "models" / "mw", tmp_path, sample_files).returncode == 0


@pytest.mark.slow
def test_a_run_killed_while_training_leaves_no_artifact_that_predict_sh_accepts(tmp_path, sample_files):
    from galaxylib.artifact import list_runs

    models = tmp_path / "models"
    command = [
        str(PROJECT_ROOT / "train.sh"),
        *TINY,
        "--run-name",
        "killed",
        "--reports-root",
        str(tmp_path / "reports"),
        "--models-root",
        str(models),
    ]
    env = {**os.environ, "PYTHON": sys.executable, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen(
        command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        # the model is saved, and 02_train is fitting its calibration and OOD check: the worst moment
        while not (models / "killed.partial" / "model.json").is_file():
            assert proc.poll() is None, "train.sh ended before its artifact was staged"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (models / "killed").exists()
    assert list_runs(models) == []  # the dashboard offers nothing
    refused = predict_sh(models / "killed", tmp_path, sample_files)
    assert refused.returncode == 2, refused.stdout + refused.stderr
