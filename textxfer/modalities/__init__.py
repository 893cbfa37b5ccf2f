"""What differs between text and images: encoding, batching, prediction from a saved model."""
