"""Gateway: the public OpenAI-compatible HTTP API (FastAPI). It holds no state."""
