"""Export: SavedModels for TF Serving, ONNX and LiteRT, int8 quantization, and the runtimes
that run them."""
