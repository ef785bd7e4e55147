"""The voila dashboard, in parts: sources (models, examples), uploads (limits, then the one
classify path), render (HTML, CSS, JavaScript), gradcam (the only TensorFlow user) and app
(the widgets and their callbacks)."""

from galaxylib.apps.dashboard.app import Dashboard, show

__all__ = ["Dashboard", "show"]
