"""
Options shared by the cluster roles (``wsfabric-gate`` and
``wsfabric-backend``): where Redis is, the namespace, the cluster secret, and
the timing of leases and calls.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.python import usage

from wsfabric.options import positive_float

#: The environment variable the cluster secret may come from.
SECRET_VARIABLE = "WSFABRIC_CLUSTER_SECRET"

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


CLUSTER_PARAMETERS: list[list[Any]] = [
    [
        "redis",
        "r",
        "redis://127.0.0.1:6379/0",
        "The cluster's Redis: redis://[:password@]host:port/db, or rediss:// for TLS.",
    ],
    [
        "namespace",
        None,
        "wsfabric",
        "Prefix of every Redis key and channel, so deployments can share one Redis.",
    ],
    [
        "cluster-secret",
        None,
        None,
        f"Secret every gate-backend connection must prove (default: ${SECRET_VARIABLE}).",
    ],
    [
        "cluster-secret-file",
        None,
        None,
        "Read the cluster secret from this file (keeps it out of the process list).",
    ],
    [
        "lease",
        None,
        5.0,
        "Seconds a node's lease in Redis lasts; a node silent that long is dead "
        "and its clients are swept within twice that.",
        positive_float,
    ],
    [
        "call-timeout",
        None,
        10.0,
        "Seconds a call between gate and backend may take.",
        positive_float,
    ],
    [
        "redis-timeout",
        None,
        2.0,
        "Seconds a Redis command may take before the call fails with ClusterUnavailable.",
        positive_float,
    ],
]


def check_cluster_options(options: usage.Options) -> None:
    """
    Validate the cluster options, and resolve the secret (from the option,
    the file, or the environment) into ``options["secret"]`` as bytes.

    :raises usage.UsageError: naming the problem.
    """
    if not _NAMESPACE.match(options["namespace"]):
        raise usage.UsageError(
            f"--namespace {options['namespace']!r}: use 1-64 letters, digits, '_', '.' or '-'"
        )
    if not options["redis"].startswith(("redis://", "rediss://")):
        raise usage.UsageError(
            f"--redis {options['redis']!r}: expected redis://host:port/db or rediss://..."
        )
    secret = options["cluster-secret"]
    path = options["cluster-secret-file"]
    if secret is not None and path is not None:
        raise usage.UsageError("give --cluster-secret or --cluster-secret-file, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as e:
            raise usage.UsageError(f"--cluster-secret-file {path}: {e.strerror}") from None
    if secret is None:
        secret = os.environ.get(SECRET_VARIABLE)
    if not secret:
        raise usage.UsageError(
            f"a cluster secret is required: --cluster-secret, --cluster-secret-file "
            f"or ${SECRET_VARIABLE} (the same on every gate and backend)"
        )
    options["secret"] = secret.encode("utf-8")
