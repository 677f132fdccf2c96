"""The run store: a run's folder and its layout, its record (run.json), its checkpoints."""
