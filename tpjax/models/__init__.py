"""Encoder models, their configs and weight import."""
