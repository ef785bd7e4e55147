"""Mixed precision for training on a GPU, and a float32 model for everything after.

With ``train.mixed_precision`` on (``auto``: when TensorFlow sees a GPU) the network is built and
trained under Keras' ``mixed_float16`` policy: float16 activations on the GPU's tensor cores,
float32 weights, a loss scale against underflow, and the softmax kept in float32. The model that
is saved, exported and served is rebuilt in float32 with the trained weights, so the artifact is
the same kind whatever trained it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

MIXED = "mixed_float16"


def use_mixed_precision(setting: str | bool) -> bool:
    """``train.mixed_precision``: true, false, or ``auto`` (on when a GPU is visible)."""
    value = str(setting).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", "none"):
        return False
    if value != "auto":
        raise ValueError(f"train.mixed_precision must be auto, true or false, not {setting!r}")
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))  # physical: starts no device


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """Keras' global dtype policy set to ``mixed_float16`` inside the block (when ``mixed``)."""
    if not mixed:
        yield
        return
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _to_float32(config: Any) -> Any:
    """A model config with every mixed_float16 policy replaced by float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and (config.get("config") or {}).get("name") == MIXED:
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _to_float32(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_to_float32(v) for v in config]
    return "float32" if config == MIXED else config


def as_float32(model):
    """The same network with float32 computations everywhere and the same weights (a mixed
    precision layer keeps its weights in float32, so nothing is rounded)."""
    import keras

    rebuilt = keras.Model.from_config(_to_float32(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt
