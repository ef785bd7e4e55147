"""galaxylib: the one home of the galaxy-morphology kit's logic.

The subpackages follow the TensorFlow boundary (docs/architecture.md):
``data``, ``inference``, ``store`` and ``apps`` run without TensorFlow;
``modeling`` (and the ``pipeline`` that trains) is the only part that imports it.
An import-linter contract in pyproject.toml checks this in the test suite.
"""

__version__ = "0.2.0"
