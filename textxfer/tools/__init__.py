"""Commands built on training: compare strategies, check data, evaluate a saved model."""
