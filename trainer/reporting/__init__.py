"""What a run reports: the events of docs/metrics.md, metrics.jsonl and heartbeats, MFU, the
console and loss.png."""
