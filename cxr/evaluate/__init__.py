"""Evaluation of the classifier zoo: metrics, patient bootstrap, comparison table."""
