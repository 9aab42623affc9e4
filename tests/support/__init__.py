"""Fixture builders shared by the tests (models, checkpoints, clusters)."""
