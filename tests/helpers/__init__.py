"""Worker functions and helpers that tests run inside real worker processes."""
