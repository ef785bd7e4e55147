"""galaxylib: the one home of the Galaxy10 DECaLS kit's logic.

Import-light on purpose: the inference path (classes, preprocessing, predictor, db)
never imports TensorFlow. Training-side modules (model, training, artifact export)
import it lazily.
"""
from galaxylib.classes import CLASS_NAMES, NUM_CLASSES, class_name

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "class_name"]
__version__ = "0.1.0"
