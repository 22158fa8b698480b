"""
wsfabric's benchmark suite: ``python -m bench run`` (see bench/README.md).

The modules of this directory also run as scripts (``run_quick.py``,
``build_wsload.py``), so they import each other by plain module name with
this directory on ``sys.path``.
"""
