"""The production endpoint: adapted generators from a model root behind one batched Ray Serve application."""
