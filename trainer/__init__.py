"""GPT-2 instruction fine-tuning: the GPT-2 library (gpt2/), training (training/), the run's
lifecycle (lifecycle/) and what it reports (reporting/); `python -m trainer.generate` and
`python -m trainer.export` are its commands. docs/architecture.md says who owns what."""
