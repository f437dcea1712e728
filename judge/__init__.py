"""LLM-judge scoring of instruction responses against Ollama or OpenAI-compatible servers.

`python -m judge score FILE` scores each entry's response with the chapter's prompt
(Raschka, *Build a Large Language Model (From Scratch)*, ch. 7), many requests in flight on
one server or several, resumable from a journal, in flat memory at any input size. It imports
neither torch nor the trainer; the dashboard reads its summary file (docs/judge.md).
"""
