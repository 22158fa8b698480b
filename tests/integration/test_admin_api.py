"""
The server HTTP API of a real standalone node, fuzzed by schemathesis from
its own OpenAPI document: no request, valid or not, gets a server error, and
every answer matches the document (status codes, content types, schemas).
Bounded: a few examples per method, a few seconds in all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile

from tests.integration.support import IntegrationTestCase, async_test
from tests.integration.test_admin import KEY, ahttp, key_file


class ApiFuzzTests(IntegrationTestCase):
    timeout = 120

    @async_test(timeout=110)
    async def test_schemathesis(self) -> None:
        """
        schemathesis (every check it has, positive and negative data) finds
        nothing wrong in the API of a standalone node.
        """
        node = self.standalone(options=["--api-key-file", key_file()])
        status, document = await ahttp(node.admin_url + "/api/v1/openapi.json", key=None)
        self.assertEqual(status, 200)
        self.assertEqual(document["openapi"], "3.1.0")
        self.assertEqual(len(document["paths"]), 25)
        # schemathesis writes its files to the working directory.
        scratch = tempfile.mkdtemp(prefix="wsfabric-schemathesis-")
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable, "-m", "schemathesis.cli", "run",
                node.admin_url + "/api/v1/openapi.json",
                "--header", f"Authorization: Bearer {KEY}",
                "--checks", "all",
                "--max-examples", "8",
                "--workers", "1",
                "--no-color",
                "--generation-database", "none",
            ],
            capture_output=True, text=True, timeout=90,
            cwd=scratch,
            env=dict(os.environ, SCHEMATHESIS_TELEMETRY="false"),
        )
        print(result.stdout[-3000:])
        self.assertEqual(result.returncode, 0, result.stdout[-6000:] + result.stderr[-2000:])
        self.assertIn("passed", result.stdout)
        self.assertNotIn("Internal Server Error", result.stdout)
        self.assertIn("Tested: 25", result.stdout, "not every method was tested")
        self.assertFalse("Traceback" in node.log(), node.log()[-3000:])

    @async_test(timeout=60)
    async def test_errors(self) -> None:
        """
        Each documented error, with its JSON reason.
        """
        node = self.standalone(options=["--api-key-file", key_file()])
        api = node.admin_url + "/api/v1/"
        cases = [
            (api + "get_all_groups", {}, None, 401, "unauthorized"),
            (api + "get_all_groups", {}, "not-the-key-but-long-enough", 401, "unauthorized"),
            (api + "no_such_method", {}, KEY, 404, "unknown_method"),
            (api + "send_to_group", b"{not json", KEY, 400, "bad_request"),
            (api + "send_to_group", [1, 2], KEY, 400, "bad_request"),
            (api + "send_to_group", {"group": "g"}, KEY, 400, "bad_request"),
            (api + "send_to_group", {"group": 7, "message": "x"}, KEY, 400, "bad_request"),
            (api + "send_to_group", {"group": "g", "message": "x", "extra": 1}, KEY, 400,
             "bad_request"),
            (api + "send_to_group", {"group": "g", "message": "!!", "binary": True}, KEY, 400,
             "bad_request"),
            (api + "close_client", {"client_id": "c", "code": 1001}, KEY, 400, "bad_request"),
            (api + "join_group", {"client_id": "nobody", "group": "g"}, KEY, 404,
             "client_not_found"),
        ]
        for url, body, key, status, code in cases:
            got_status, got = await ahttp(url, body, key=key)
            self.assertEqual((got_status, got["error"]["code"]), (status, code), (url, body, got))
            self.assertTrue(got["error"]["message"])
        status, got = await ahttp(api + "get_all_groups", None, method="GET")
        self.assertEqual((status, got["error"]["code"]), (405, "method_not_allowed"))

        disabled = self.standalone()
        status, got = await ahttp(disabled.admin_url + "/api/v1/get_all_groups", {})
        self.assertEqual((status, got["error"]["code"]), (403, "api_disabled"))
        self.assertIn("--api-key-file", got["error"]["message"])
        status, got = await ahttp(disabled.admin_url + "/api/v1/get_all_client_count", {})
        self.assertEqual(status, 403)

        # A binary message round-trips as base64; a result is JSON.
        status, got = await ahttp(api + "send_to_all", {"message": "AAE=", "binary": True})
        self.assertEqual((status, got), (200, {"result": None}))
        status, got = await ahttp(api + "get_all_client_count", {})
        self.assertEqual((status, got), (200, {"result": 0}))
        self.assertEqual(json.loads(json.dumps(got)), got)
