"""A run's lifecycle: its phases from flags to outputs, one owner from the first file to run_end,
signals and lost ranks, checkpoints, resume, the run directory and checkpoint consolidation."""
