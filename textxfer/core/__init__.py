"""The lowest layer: errors, precision, the machine's description, metrics; imports nothing of textxfer."""
