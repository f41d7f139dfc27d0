"""Compile stage: HF checkpoint -> GGUF / ONNX, quantized per device profile, with a quality gate."""
