"""Implementations of the cluster seams (bus and index): in memory, and on Redis."""
