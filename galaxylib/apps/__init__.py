"""Entry points: predict.sh and the voila dashboard."""
