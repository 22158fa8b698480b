"""
The admin listener of every role: health checks, Prometheus metrics, the
server HTTP API (every IFabric method over ``POST /api/v1/<method>``), the
live dashboard, and the JSON log format.

It listens apart from the clients (``--admin``, loopback by default) so that
none of it is reachable from where clients come from unless an operator
says so. See ``docs/operations.md``.
"""
