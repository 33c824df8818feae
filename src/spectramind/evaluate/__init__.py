"""Predict (submission.csv), evaluate (score, per-bin table, plots) and the submission format."""
