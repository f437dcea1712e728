"""Training: the run's config, its data and batches, the loss, the DeepSpeed engine and the loop."""
