"""Generation: one Backend over llama.cpp (GGUF) and onnxruntime-genai (ONNX)."""
