"""Evaluation: scoring a Translator on test splits, the metrics, Inception features."""
