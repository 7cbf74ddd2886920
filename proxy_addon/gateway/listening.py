"""Says where the proxy serves, once mitmproxy listens (``running``): one
``tokenproxy listening on URL`` line per address on stdout (tests and scripts parse it), then
``on_listening`` (the demo banner of :mod:`proxy_addon.cli.run`)."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import ctx


class Listening:
    def __init__(self, tls: bool,
                 on_listening: Callable[[list[str]], None] | None = None) -> None:
        self._scheme = "https" if tls else "http"
        self.on_listening = on_listening
        self.listening: list[str] = []

    def running(self) -> None:
        server = ctx.master.addons.get("proxyserver")
        addresses = server.listen_addrs() if server is not None else []
        self.listening = [f"{self._scheme}://{host}:{port}" for host, port, *_ in addresses]
        for url in self.listening:
            print(f"tokenproxy listening on {url}", flush=True)
        if self.on_listening is not None:
            self.on_listening(self.listening)
