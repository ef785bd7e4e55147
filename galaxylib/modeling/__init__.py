"""Modelling and training: the only part of galaxylib that imports TensorFlow and Keras."""
