"""The game example: a protobuf match on a grid, a Python bot and a browser view."""
