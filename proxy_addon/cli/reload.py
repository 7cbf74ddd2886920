"""Hot reload (issue 19, item 1): ``SIGHUP`` (or ``tokenproxy reload --config FILE``, which
finds the running proxy of that file and signals it) re-reads the config.

The file is validated whole first: a bad file is refused with the usual ``FILE: key: reason``
line in the log, counted (``tokenproxy_config_reloads_total{outcome="refused"}``), and the
running config stays. A good one applies at once, without dropping a connection or a token:
accounts added, removed (their sessions revoked once their requests finish) or with new
credentials (:mod:`.live_accounts`), then ``[[clients]]`` — added, removed, keys rotated
(several at a time), ``allow`` lists, rate weights and quotas. What can only change with a
restart (listeners, the store, the upstream, …) is named in the log and left as it runs;
the log settings (``[proxy] log_format``, ``access_log``) and the rate-limit settings
(``[rate_limits]`` but its ``window``, ``replicas`` and a mode to or from ``off``) apply at
once. A
supervisor of ``--workers`` passes the signal to every worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path

from ..config import ClientConfig, Config, ConfigError, load_config
from ..ops.logs import SECRETS
from ..ops.metrics import Metrics
from .live_accounts import AccountChanges, LiveAccounts

log = logging.getLogger("tokenproxy.reload")

ApplyClients = Callable[[tuple[ClientConfig, ...]], None]
ApplySettings = Callable[[Config], object]
# what a reload applies besides accounts and clients (see ``settings`` of Reloader)
LIVE_KEYS = frozenset({"proxy.log_format", "proxy.access_log", "rate_limits.mode",
                       "rate_limits.max_wait", "rate_limits.limits",
                       "rate_limits.default_retry_after", "rate_limits.max_penalty"})


class Reloader:
    """Applies the config file again on SIGHUP. Reloads run one at a time, in the order the
    signals came; ``accounts`` (None: accounts need a restart) applies account changes."""

    def __init__(self, config: Config, appliers: Iterable[ApplyClients], metrics: Metrics,
                 accounts: LiveAccounts | None = None,
                 settings: Iterable[ApplySettings] = ()) -> None:
        self.config = config
        self._appliers = list(appliers)
        self._settings = list(settings)  # LIVE_KEYS: log and rate-limit settings
        self._metrics = metrics
        self._accounts = accounts
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    def signalled(self) -> None:
        """The SIGHUP handler: the reload runs as a task of the running loop."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="tokenproxy-reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read the running config's file; True when it was applied."""
        async with self._lock:
            try:
                new = load_config(self.config.source)
            except ConfigError as exc:
                return self._refuse(str(exc))
            old = self.config
            changes = AccountChanges.between(old, new)
            if changes and self._accounts is None:
                return self._refuse(f"{new.source}: [[accounts]] changed, which this process "
                                    "applies only with a restart")
            renamed = changes.identity_changes(old)
            if renamed:
                return self._refuse(
                    f"{new.source}: account(s) {', '.join(renamed)}: a new app, platform or "
                    "grant is another session under the same name. Give the account a new "
                    "name (the old one's session is then revoked), or restart")
            SECRETS.add(new.secret_values(), fixed=True)
            if self._accounts is not None:
                await self._accounts.add(new, changes)  # before the clients naming them
            for apply in self._appliers:
                apply(new.clients)
            for apply_settings in self._settings:
                apply_settings(new)
            if self._accounts is not None:
                await self._accounts.settle(new, changes)
            self.config = new
            self._metrics.config_reloads.labels("applied").inc()
            self._log_applied(old, new, changes)
            if self._accounts is not None and changes.removed:
                await self._accounts.retire(old, changes)  # their requests, then sessions
            return True

    def _log_applied(self, old: Config, new: Config, changes: AccountChanges) -> None:
        before = {c.name: c for c in old.clients}
        after = {c.name: c for c in new.clients}
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(n for n in after.keys() & before.keys() if after[n] != before[n])
        restart = restart_needed(old, new)
        accounts = ""
        if changes:
            accounts = (f"; accounts added {[a.name for a in changes.added] or '-'}, "
                        f"removed {[a.name for a in changes.removed] or '-'}, "
                        f"changed {[a.name for a in changes.changed] or '-'}")
        log.info("config reloaded from %s: clients added %s, removed %s, changed %s%s%s",
                 new.source, added or "-", removed or "-", changed or "-", accounts,
                 f"; needs a restart to change: {', '.join(restart)}" if restart else "",
                 extra={"event": "config_reloaded"})

    def _refuse(self, reason: str) -> bool:
        self._metrics.config_reloads.labels("refused").inc()
        log.error("config reload refused, the running config stays: %s", reason,
                  extra={"event": "config_reload_refused"})
        return False


def restart_needed(old: Config, new: Config) -> list[str]:
    """The keys of ``new`` that differ from ``old`` and only a restart applies
    (``[proxy] token_wait_timeout``; a whole section where it is not a table of keys)."""
    parts = []
    for item in fields(old):
        if item.name in ("source", "clients", "accounts"):
            continue
        before, after = getattr(old, item.name), getattr(new, item.name)
        if before == after:
            continue
        if not is_dataclass(before):
            parts.append(f"[{item.name}]")
            continue
        parts += [f"[{item.name}] {key.name}" for key in fields(before)
                  if getattr(before, key.name) != getattr(after, key.name)
                  and f"{item.name}.{key.name}" not in LIVE_KEYS]
    if (old.rate_limits.mode == "off") != (new.rate_limits.mode == "off"):
        parts.append("[rate_limits] mode (to or from \"off\")")
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
