"""Transfer strategies: which parts of a backbone train (head, freeze, lora, full, gradual), and the
model changes small data needs (pooling, re-initialised layers)."""
