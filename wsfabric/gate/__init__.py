"""The gate: the clients it owns, the WebSocket edge, and the gate role."""
