"""A GPT-2 library usable alone: the model, its weight formats, the tokenizer, generation and
downloads. It imports nothing of DeepSpeed (tests/test_project.py checks it)."""
