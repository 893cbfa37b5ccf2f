"""Text: tokenising, length-grouped batches, the saved text classifier."""
