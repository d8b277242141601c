"""The edge's shell performs the oidc module's effects (EdgeServer.perform):
https to a provider whose certificate only `ca_file` trusts, and a provider
that is down. Loopback only (127.0.0.1)."""
from __future__ import annotations

import asyncio
import socket
import ssl
from types import SimpleNamespace

import pytest
from aiohttp import web

from edge.certs import CertAuthority
from edge.modules.base import HttpCall
from edge.server import EdgeServer

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_perform_trusts_the_ca_file_and_reports_a_provider_that_is_down(tmp_path):
    ca = CertAuthority.create(tmp_path / "ca")
    issued = ca.issue(["localhost"])
    (tmp_path / "c.pem").write_bytes(issued.cert_pem)
    (tmp_path / "k.pem").write_bytes(issued.key_pem)
    port, down = _free_port(), _free_port()

    async def discovery(request):
        return web.json_response({"issuer": f"https://localhost:{port}"})

    async def main():
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
        shell = SimpleNamespace(_effects=None, _effect_ssl={})
        url = f"https://localhost:{port}/.well-known/openid-configuration"
        try:
            ok = await EdgeServer.perform(shell, HttpCall("GET", url, ca_file=str(ca.cert_path)))
            untrusted = await EdgeServer.perform(shell, HttpCall("GET", url))
            gone = await EdgeServer.perform(shell, HttpCall("GET", f"https://localhost:{down}/x",
                                                            ca_file=str(ca.cert_path), timeout=2))
            bad_ca = await EdgeServer.perform(shell, HttpCall("GET", url, ca_file=str(tmp_path / "missing.pem")))
        finally:
            await shell._effects.close()
            await runner.cleanup()
        return ok, untrusted, gone, bad_ca

    ok, untrusted, gone, bad_ca = asyncio.run(main())
    assert ok.status == 200 and b'"issuer"' in ok.body and not ok.error
    assert untrusted.status == 0 and untrusted.error  # the system CAs do not know the lab CA
    assert gone.status == 0 and gone.error
    assert bad_ca.error.startswith("ca_file_")
