"""The one way to load an artifact's ``model.keras``, with galaxylib's own layers known to Keras."""

from __future__ import annotations

from galaxylib.artifact import KERAS_FILE, Artifact, ArtifactError


def load_keras_model(artifact: Artifact):
    """The saved Keras model, uncompiled: an orientation-averaged model or a morphology backbone
    holds layers of galaxylib's, which are registered first."""
    import keras

    from galaxylib.modeling import (
        morphology,  # noqa: F401  (registers its layers for loading)
        orientation,
        scratch_cnn,
    )

    orientation.register()  # an orientation-averaged model holds galaxylib's own layers
    scratch_cnn.register()  # so does a CNN from scratch
    if not artifact.keras_path.is_file():
        raise ArtifactError(f"{artifact.path} is missing {KERAS_FILE}")
    return keras.models.load_model(artifact.keras_path, compile=False)
