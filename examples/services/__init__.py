"""
Two services talking by ``call``: ``lobby`` matches players and ``game``
runs their tic-tac-toe match. See README.md.
"""
