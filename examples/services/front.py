"""
The ``default`` service of the example: every client's connect and close
reach it, and so does every message that names no other service. Here it
only says hello; a real front would authenticate and set up the client.
"""

from __future__ import annotations

from typing import Any

from wsfabric.errors import RouteError
from wsfabric.routing import Router, route

MAX_NAME = 16


class FrontApp(Router):
    """
    ``hello`` (``{"name": ...}``) → ``{"client_id": ...}``: records the
    player's name in the client's info, where the other services read it.
    """

    @route("hello")
    async def hello(self, client_id: Any, data: Any) -> Any:
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise RouteError("bad_name", f"name must be 1 to {MAX_NAME} characters")
        await self.fabric.update_info(client_id, {"name": name})
        return {"client_id": client_id}
