"""`serve`: the OpenAI-compatible HTTP API and the chat/status page."""
