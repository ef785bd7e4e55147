"""Datasets: the Galaxy10 download, h5 and folder readers, splits and the synthetic renderer (no TensorFlow)."""
