"""The echo example."""
