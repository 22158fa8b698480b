"""
The checked-in ``wsfabric/routing/envelope_pb2.py`` is what ``protoc``
generates from ``envelope.proto``: an edit of one without the other fails
here.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import wsfabric

ROOT = Path(wsfabric.__file__).resolve().parent.parent
PROTO = "wsfabric/routing/envelope.proto"
GENERATED = "wsfabric/routing/envelope_pb2.py"


class RegenerationTests(SynchronousTestCase):
    def test_generated_module_is_current(self) -> None:
        """
        Regenerating envelope_pb2.py with grpc_tools.protoc gives the
        checked-in file, byte for byte.
        """
        try:
            import grpc_tools  # noqa: F401
        except ImportError:
            raise SkipTest("grpcio-tools is not installed (pip install -e '.[test]')") from None
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [sys.executable, "-m", "grpc_tools.protoc", "-I", ".",
                 f"--python_out={out}", PROTO],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            generated = (Path(out) / GENERATED).read_bytes()
        checked_in = (ROOT / GENERATED).read_bytes()
        self.assertEqual(
            generated,
            checked_in,
            f"{GENERATED} is stale; regenerate it with: python -m grpc_tools.protoc "
            f"-I . --python_out=. {PROTO}",
        )

    def test_envelope_fields(self) -> None:
        """
        The message has the fields docs/wire-protocol.md describes.
        """
        from wsfabric.routing.envelope_pb2 import Envelope, RouteTable

        fields = {f.name: (f.number, f.type) for f in Envelope.DESCRIPTOR.fields}
        descriptor = Envelope.DESCRIPTOR.fields_by_name
        self.assertEqual(
            fields,
            {
                "route": (1, descriptor["route"].TYPE_STRING),
                "route_id": (2, descriptor["route_id"].TYPE_UINT32),
                "id": (3, descriptor["id"].TYPE_UINT64),
                "data": (4, descriptor["data"].TYPE_BYTES),
                "error": (5, descriptor["error"].TYPE_MESSAGE),
            },
        )
        self.assertEqual(Envelope.DESCRIPTOR.full_name, "wsfabric.Envelope")
        self.assertEqual(RouteTable.DESCRIPTOR.fields_by_name["routes"].number, 1)
