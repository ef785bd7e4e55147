"""Evaluation: metrics, report figures and tables."""
