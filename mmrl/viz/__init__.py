"""Pictures of runs: learning curves from a run's metrics.jsonl."""
