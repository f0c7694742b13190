"""Evaluation: batched generation, text and classification metrics, in-context prompting, reports."""
