"""Evaluation: label parsing, classification metrics, generation and reports."""
