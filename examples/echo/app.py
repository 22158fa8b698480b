"""
The echo example: every message a client sends comes back to it, through
:meth:`~wsfabric.interfaces.IFabric.send_to_client` (text stays text, binary
stays binary)::

    twistd -n wsfabric --app examples.echo.app:EchoApp
"""

from zope.interface import implementer

from wsfabric.interfaces import IApplication, IFabric


@implementer(IApplication)
class EchoApp:
    """
    Sends every message back to its sender.

    :param fabric: the cluster API.
    """

    def __init__(self, fabric: IFabric) -> None:
        self.fabric = fabric

    def on_connect(self, client_id, request):
        """
        Nothing to set up.
        """

    def on_message(self, client_id, message):
        """
        Send ``message`` back to its sender.
        """
        return self.fabric.send_to_client(client_id, message)

    def on_close(self, client_id):
        """
        Nothing to clean up.
        """
