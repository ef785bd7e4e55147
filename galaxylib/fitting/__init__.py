"""The training side's fits of what a served model applies: its calibration and its OOD check.

NumPy, SciPy and scikit-learn; no TensorFlow. ``galaxylib.inference`` applies the results and
imports nothing from here (a checked contract), so ``galaxylib[serve]`` needs neither SciPy nor
scikit-learn.
"""
