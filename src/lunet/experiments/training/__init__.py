"""Training: the trainer, one optimisation step, its CUDA graph, the learning-rate schedule,
the training state a checkpoint holds, the run's log, and training in several processes."""
