"""On-device runtime: bundle, RAG index, generation, server, telemetry. Never imports torch/transformers."""
