"""Training: the run's config, its data (tokenized once into a token cache) and batches, the loss, the DeepSpeed engine and the loop."""
