"""The training pipeline: run configuration, the run folder, the steps the notebooks call, train.sh."""
