"""Base-model import: the embedded GGUF, another GGUF or an HF folder -> a verified HF checkpoint."""
