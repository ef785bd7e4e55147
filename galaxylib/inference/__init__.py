"""Inference without TensorFlow: the LiteRT Predictor and the one classify path."""
