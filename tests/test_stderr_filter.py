"""train.sh keeps TensorFlow's, absl's, MLflow's and the kernels' known noise off the terminal,
and passes everything else through as written (progress bars' carriage returns included)."""

import subprocess
import sys

from galaxylib.pipeline.stderr_filter import native_noise_filtered

NOISY_CHILD = r"""
import sys
sys.stderr.write("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
sys.stderr.write("I0000 00:00:1796696106.488642     720 port.cc:153] oneDNN custom operations are on. You may see...\n")
sys.stderr.write("train.sh: a real message\n")
sys.stderr.write("Executing:  50%|##   | 1/2\rExecuting: 100%|#####| 2/2\r")
sys.stderr.write("2026/12/08 02:20:00 INFO mlflow.store.db.utils: Creating initial MLflow database tables...\n")
sys.stderr.write("[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication ...\n")
sys.stderr.write("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
sys.stderr.write("a last line without an end")
"""


def test_known_noise_from_a_child_is_dropped_and_the_rest_arrives_unchanged(capfd):
    with native_noise_filtered():
        subprocess.run([sys.executable, "-c", NOISY_CHILD], check=True)
        print("and this process's own stderr", file=sys.stderr)
    err = capfd.readouterr().err
    assert err == (
        "train.sh: a real message\n"
        "Executing:  50%|##   | 1/2\rExecuting: 100%|#####| 2/2\r"
        "and this process's own stderr\n"
        "a last line without an end"  # held until it ends, or until the filter stops
    )
