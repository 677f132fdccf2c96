"""Evaluation of image runs: test likelihood, samples, agreement, out-of-distribution scores."""
