"""The chat example."""
