"""``tokenproxy run --workers N``: N proxy processes serving one listen address.

The supervisor (this module) picks the port, starts the bundled emulator if the config asks for
it, and runs N copies of ``tokenproxy run`` as workers. Each worker binds the same address with
SO_REUSEPORT (the kernel spreads connections over them) and shares the token store, so the
workers renew each account once between them, like replicas. Each worker serves its own
metrics listener: ``metrics_listen`` port + worker index (or a free port when it is 0), one
Prometheus target per worker. A worker that dies is restarted (at most 5 times a minute).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import replace

from ..config import Config, HostPort

RESTARTS_PER_MINUTE = 5
SHARED_BACKENDS = ("sqlite", "redis")  # what several processes can share


def usable_cores() -> int:
    """CPU cores this process may run on: the affinity mask, capped by a cgroup v2 CPU limit
    (``cpu.max``: a container limited to 1.5 CPUs gets 2 workers, not the host's 64)."""
    import math
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as limit:
            quota, period = limit.read().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def resolve_workers(requested: int | str, config: Config, worker: bool) -> int:
    """``--workers``: a number as given; ``auto``: the usable cores when the store can be
    shared by several processes, else 1 (and always 1 inside a worker)."""
    if worker:
        return 1
    if requested != "auto":
        return int(requested)
    return usable_cores() if config.store.backend in SHARED_BACKENDS else 1


def unshared_store(config: Config, workers: int, worker: bool) -> str | None:
    """Why this config cannot run as several workers, or None. A memory store lives inside one
    process: N workers would be N stores (N platform sessions for each account, a virtual token
    valid on one worker only), so it is refused rather than run that way."""
    backend = config.store.backend
    if (workers <= 1 and not worker) or backend in SHARED_BACKENDS:
        return None
    many = f"--workers {workers}" if workers > 1 else "a --worker process"
    return (f"store.backend: {backend!r} keeps the tokens inside one process, so {many} would "
            "run separate stores (one platform session per worker for each account, virtual "
            "tokens valid on one worker only): set [store] backend = \"sqlite\" (shared by "
            "the workers of one host) or \"redis\", or run without --workers")


def for_worker(config: Config, index: int, port: int) -> Config:
    """The config one worker runs with: the shared listen port, its own metrics port."""
    proxy = config.proxy
    metrics = proxy.metrics_listen
    if metrics is not None and metrics.port:
        metrics = HostPort(metrics.host, metrics.port + index)
    proxy = replace(proxy, listen=HostPort(proxy.listen.host, port), metrics_listen=metrics)
    return replace(config, proxy=proxy)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def supervise(config: Config, config_path: str, workers: int, extra_args: list[str]) -> int:
    from .run import _emulator  # the demo's emulator runs once, in the supervisor

    port = config.proxy.listen.port or _free_port(config.proxy.listen.host)
    stopping = threading.Event()

    def command(index: int) -> list[str]:
        return [sys.executable, "-m", "proxy_addon", "run", "--config", config_path,
                *extra_args, "--worker", str(index), "--listen-port", str(port)]

    def forward(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)

    def start(index: int) -> subprocess.Popen[str]:
        # each worker keeps to 1/N of every API budget it cannot share through the store
        env = dict(os.environ, TOKENPROXY_WORKERS=str(workers))
        proc = subprocess.Popen(command(index), stdout=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=forward, args=(proc,), daemon=True).start()
        return proc

    def stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs: list[subprocess.Popen[str]] = []

    def reload(*_: object) -> None:  # every worker re-reads the config (cli/reload.py)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload)
    with _emulator(config):
        procs[:] = [start(i) for i in range(workers)]
        restarts: deque[float] = deque()
        exit_code = 0
        try:
            while not stopping.wait(0.5):
                for index, proc in enumerate(procs):
                    code = proc.poll()
                    if code is None:
                        continue
                    now = time.monotonic()
                    while restarts and restarts[0] < now - 60:
                        restarts.popleft()
                    if code == 2 or len(restarts) >= RESTARTS_PER_MINUTE:
                        print(f"tokenproxy: worker {index} exited ({code}); stopping",
                              file=sys.stderr, flush=True)
                        exit_code = 2 if code == 2 else 1  # bad config or store: as one process
                        stopping.set()
                        break
                    print(f"tokenproxy: worker {index} exited ({code}); restarting",
                          file=sys.stderr, flush=True)
                    restarts.append(now)
                    procs[index] = start(index)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            # each worker drains on SIGTERM: its grace, then its in-flight requests
            deadline = time.monotonic() + config.proxy.drain_grace \
                + config.proxy.shutdown_timeout + 15
            for proc in procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
    return exit_code
