"""One module per transfer strategy, each registering itself (`textxfer.strategies.base.register`)."""
