"""Retrieval: rag.db (sqlite-vec + FTS5), chunking, the on-device embedder."""
