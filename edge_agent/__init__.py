"""The device agent: runs the local student, scores drafts on private data, fine-tunes, reports scores only."""
