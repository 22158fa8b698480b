"""Examples of wsfabric applications."""
