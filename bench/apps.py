"""
wsfabric applications used only by the benchmarks (``--app bench.apps:Name``,
with ``/work/main`` as the working directory).

``examples.echo.app:EchoApp`` serves the echo scenarios; the fan-out
scenarios need an application that puts every client in one group.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from wsfabric.interfaces import IApplication, IFabric

#: The one group every client of :class:`GroupApp` joins.
GROUP = "g"


@implementer(IApplication)
class GroupApp:
    """
    Every client joins group ``"g"`` when it connects; every message a
    client sends goes to the whole group with ``send_to_group`` (the sender
    included, so the load generator's publisher receives its own copy).

    This is the application of the group fan-out scenarios: standalone it
    measures P4 (group send to 1,000 local clients), on a cluster P3 (the
    send is one Redis publish from the backend, fanned out by every gate).

    :param fabric: the cluster API.
    """

    def __init__(self, fabric: IFabric) -> None:
        self.fabric = fabric

    def on_connect(self, client_id: str, request: Any) -> Any:
        """
        Join the group; the client's messages wait until this has fired.
        """
        return self.fabric.join_group(client_id, GROUP)

    def on_message(self, client_id: str, message: str | bytes) -> Any:
        """
        Send ``message`` to every member, as an application naturally would:
        returning the Deferred (the next message of this client is handed
        over once the send has been accepted).
        """
        return self.fabric.send_to_group(GROUP, message)

    def on_close(self, client_id: str) -> None:
        """
        Nothing to clean up: the gate removes the client from its groups.
        """


@implementer(IApplication)
class AllApp:
    """
    Every message a client sends goes to every connected client with
    ``send_to_all`` (the sender included): P4's broadcast through the
    fabric's own "everyone" path rather than a group.

    :param fabric: the cluster API.
    """

    def __init__(self, fabric: IFabric) -> None:
        self.fabric = fabric

    def on_connect(self, client_id: str, request: Any) -> None:
        """
        Nothing to set up: every client is reached by ``send_to_all``.
        """

    def on_message(self, client_id: str, message: str | bytes) -> Any:
        """
        Send ``message`` to everyone; the Deferred paces this client.
        """
        return self.fabric.send_to_all(message)

    def on_close(self, client_id: str) -> None:
        """
        Nothing to clean up.
        """
