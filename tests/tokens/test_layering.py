"""The token core does no I/O of its own: importing it loads neither mitmproxy nor httpx nor
a store backend, ops, upstream, gateway or cli; and it reads time only through its clock."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

TOKENS = pathlib.Path(__file__).resolve().parents[2] / "proxy_addon" / "tokens"
FORBIDDEN = ("mitmproxy", "httpx", "redis", "aiohttp", "prometheus_client", "proxy_addon.ops",
             "proxy_addon.upstream", "proxy_addon.gateway", "proxy_addon.cli",
             "proxy_addon.virtual", "proxy_addon.store.memory", "proxy_addon.store.sqlite",
             "proxy_addon.store.redis", "proxy_addon.store.factory")


def test_importing_the_core_loads_no_adapter() -> None:
    code = ("import sys, proxy_addon.tokens.pool, proxy_addon.tokens.failures; "
            "print('\\n'.join(sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=TOKENS.parents[1]).stdout.split()
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
    assert "proxy_addon.tokens.account" in loaded  # the check did import the core


def test_time_is_read_only_through_the_clock() -> None:
    pattern = re.compile(r"time\.time\(|time\.monotonic\(|asyncio\.sleep\(|\.call_later\("
                         r"|asyncio\.wait_for\(|loop\.call_at\(")
    offenders = []
    for path in sorted(TOKENS.glob("*.py")):
        if path.name == "clock.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "clock.call_later(" not in line:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
    assert (TOKENS / "clock.py").exists() and len(list(TOKENS.glob("*.py"))) >= 10
