"""Prediction from an exported folder (`textxfer export`) with onnxruntime and tokenizers only.

Nothing imported from this package imports torch or transformers: an exported model runs in a small container
or a serverless function where torch is not installed. The exporter itself (which needs torch) is
`textxfer.outputs.onnx_export`.
"""
