"""The layer names other modules look up in a classifier, and the lookup itself.

A leaf module: building (``model``), exporting (``export``), loading (``loading``) and head
training (``head``) all read these names, so none of them needs to import another for them.
"""

from __future__ import annotations

FEATURES_LAYER = "avg_pool"  # the pooled backbone features an EfficientNet head reads
MORPHOLOGY = "morphology"  # the morphology start, and the layer its measurements come out of
FUSED_FEATURES = "fused_features"  # several feature sources side by side (scratch_cnn.fused_backbone)


def features_layer(model) -> str:
    """The name of the layer whose output the head reads: ``fused_features``, ``avg_pool``, or
    ``morphology`` (a fused backbone holds the other two inside it)."""
    names = {layer.name for layer in model.layers}
    for name in (FUSED_FEATURES, FEATURES_LAYER, MORPHOLOGY):
        if name in names:
            return name
    raise ValueError(f"model {model.name!r} has neither an {FEATURES_LAYER!r} nor a {MORPHOLOGY!r} layer")
