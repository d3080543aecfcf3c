"""Data I/O: seed and test-set loading, fetching with sha256, append-and-resume JSONL."""
