"""In-process test of the listening announcement (proxy_addon/gateway/listening.py): the lines
tests/support/proxy.py parses."""

from __future__ import annotations

from types import SimpleNamespace

from proxy_addon.gateway.listening import Listening


def test_listening_prints_each_address_and_calls_back(capsys) -> None:  # type: ignore[no-untyped-def]
    from mitmproxy import ctx
    from mitmproxy.test import taddons

    seen: list[list[str]] = []
    addon = Listening(True, on_listening=seen.append)
    with taddons.context(addon, loadcore=False) as tctx:
        tctx.master.addons.add(SimpleNamespace(
            name="proxyserver", listen_addrs=lambda: [("127.0.0.1", 8443), ("::1", 8443, 0, 0)]))
        assert ctx.master is tctx.master
        addon.running()
    assert seen == [["https://127.0.0.1:8443", "https://::1:8443"]]
    assert capsys.readouterr().out.splitlines() == [
        "tokenproxy listening on https://127.0.0.1:8443", "tokenproxy listening on https://::1:8443"]
