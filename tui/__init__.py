"""A Textual dashboard that follows a training run's files (docs/metrics.md) over SSH.

It imports nothing from trainer/, torch or deepspeed: the files are the only contract.
"""
