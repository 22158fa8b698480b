"""
Client ids and gate incarnations.

Every gate start draws a fresh random incarnation of 64 bits; that
incarnation is the gate's id, and every client id the gate issues is the
gate id, a dash, and a sequence number in base 36 (``"9f0c4e7a1b2d3c4f-1a"``).
So a client id names the gate that owns it, and an id is never issued twice:
not by another gate, and not by the same gate after a restart.

Applications must treat client ids as opaque strings.
"""

from __future__ import annotations

import os
import re

_GATE_ID = re.compile(r"[0-9a-f]{16}\Z")
_CLIENT_ID = re.compile(r"([0-9a-f]{16})-[0-9a-z]{1,13}\Z")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_gate_id(urandom=os.urandom) -> str:
    """
    :param urandom: the source of random bytes (``os.urandom``).
    :return: a fresh gate id (a new incarnation), 16 lowercase hex digits.
    """
    return urandom(8).hex()


def is_gate_id(value: str) -> bool:
    """
    :return: whether ``value`` has the form of a gate id.
    """
    return bool(_GATE_ID.match(value))


def gate_of(client_id: str) -> str | None:
    """
    :param client_id: a client id, possibly malformed.
    :return: the id of the gate that issued it, or ``None`` when it is not a
        well-formed client id.
    """
    match = _CLIENT_ID.match(client_id) if isinstance(client_id, str) else None
    return match.group(1) if match else None


def _base36(number: int) -> str:
    digits = []
    while True:
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
        if not number:
            return "".join(reversed(digits))


class ClientIdIssuer:
    """
    Issues the client ids of one gate incarnation.

    :param gate_id: the gate's id, from :func:`new_gate_id`.
    """

    __slots__ = ("gate_id", "_prefix", "_next")

    def __init__(self, gate_id: str) -> None:
        if not is_gate_id(gate_id):
            raise ValueError(f"not a gate id: {gate_id!r}")
        self.gate_id = gate_id
        self._prefix = gate_id + "-"
        self._next = 1

    def issue(self) -> str:
        """
        :return: a client id never issued before.
        """
        number = self._next
        self._next = number + 1
        return self._prefix + _base36(number)
