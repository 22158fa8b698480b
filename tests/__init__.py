"""Tests of wsfabric."""
