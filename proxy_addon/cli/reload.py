"""Hot reload (issue 19, item 1): ``SIGHUP`` (or ``tokenproxy reload --config FILE``, which
finds the running proxy of that file and signals it) re-reads the config.

The file is validated whole first: a bad file is refused with the usual ``FILE: key: reason``
line in the log, counted (``tokenproxy_config_reloads_total{outcome="refused"}``), and the
running config stays. A good one applies its ``[[clients]]`` at once — added, removed, keys
rotated (several at a time), ``allow`` lists, rate weights and quotas — without dropping a
connection or touching a token; the accounts' sessions are not touched at all. What can only
change with a restart (accounts, listeners, the store, the upstream, …) is named in the log
and left as it runs. A supervisor of ``--workers`` passes the signal to every worker.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path

from ..config import ClientConfig, Config, ConfigError, load_config
from ..ops.logs import SECRETS
from ..ops.metrics import Metrics

log = logging.getLogger("tokenproxy.reload")

ApplyClients = Callable[[tuple[ClientConfig, ...]], None]


class Reloader:
    def __init__(self, config: Config, appliers: Iterable[ApplyClients], metrics: Metrics) -> None:
        self.config = config
        self._appliers = list(appliers)
        self._metrics = metrics

    def reload(self) -> bool:
        """Re-read the running config's file; True when its clients were applied."""
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            return self._refuse(str(exc))
        running = {a.name for a in self.config.accounts}
        unknown = sorted({c.account for c in new.clients} - running)
        if unknown:
            return self._refuse(f"{new.source}: clients name account(s) {', '.join(unknown)} "
                                "that this process does not run: adding accounts needs a "
                                "restart")
        SECRETS.add(new.secret_values(), fixed=True)
        for apply in self._appliers:
            apply(new.clients)
        before = {c.name: c for c in self.config.clients}
        after = {c.name: c for c in new.clients}
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(n for n in after.keys() & before.keys() if after[n] != before[n])
        restart = restart_needed(self.config, new)
        self.config = new
        self._metrics.config_reloads.labels("applied").inc()
        log.info("config reloaded from %s: clients added %s, removed %s, changed %s%s",
                 new.source, added or "-", removed or "-", changed or "-",
                 f"; needs a restart to change: {', '.join(restart)}" if restart else "",
                 extra={"event": "config_reloaded"})
        return True

    def _refuse(self, reason: str) -> bool:
        self._metrics.config_reloads.labels("refused").inc()
        log.error("config reload refused, the running config stays: %s", reason,
                  extra={"event": "config_reload_refused"})
        return False


def restart_needed(old: Config, new: Config) -> list[str]:
    """The parts of ``new`` that differ from ``old`` and only a restart applies."""
    parts = []
    for item in fields(old):
        if item.name in ("source", "clients"):
            continue
        if getattr(old, item.name) != getattr(new, item.name):
            parts.append(f"[{item.name}]")
    return parts


def find_proxies(config_path: str) -> list[int]:
    """Processes running ``tokenproxy run`` with this config file (supervisors and single
    processes; a supervisor passes the signal to its workers, so workers are left out)."""
    target = Path(config_path).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        words = [a.decode("utf-8", "replace") for a in args if a]
        if "run" not in words or "--config" not in words or "--worker" in words:
            continue
        if not any(w.endswith(("proxy_addon", "tokenproxy")) for w in words):
            continue
        given = words[words.index("--config") + 1] if words.index("--config") + 1 < len(words) \
            else ""
        if given and (cwd / given).resolve() == target:
            found.append(int(entry.name))
    return found


def main(config_path: str) -> int:
    """``tokenproxy reload --config FILE``: check the file, then SIGHUP its running proxies."""
    try:
        load_config(config_path)
    except ConfigError as exc:
        print(f"tokenproxy reload: config error: {exc}", file=sys.stderr)
        return 2
    pids = find_proxies(config_path)
    if not pids:
        print(f"tokenproxy reload: no running `tokenproxy run --config {config_path}` found",
              file=sys.stderr)
        return 1
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    print(f"tokenproxy reload: signalled {len(pids)} process(es): "
          f"{', '.join(map(str, pids))}")
    return 0
