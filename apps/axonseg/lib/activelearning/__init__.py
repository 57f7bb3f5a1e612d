"""Active-learning strategies and the lease rule that keeps annotators on different images."""
