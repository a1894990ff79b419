"""Auth service: authenticates API keys and admits requests under their limits."""
