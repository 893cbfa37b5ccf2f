"""Pretrained checkpoints: loading, the layer groups of each architecture family, conversions, and the
exact cache of a frozen prefix of layers."""
