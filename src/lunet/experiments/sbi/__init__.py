"""The simulation-based inference benchmark: its tasks, their reference posteriors, the C2ST,
the runs and their report."""
