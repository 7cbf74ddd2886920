"""Scenario ``memory``: tokenproxy's resident memory during a 500 MB streamed download and over
a long run of requests.

One tokenproxy process in front of the nginx upstream (recordings routed, unbuffered, to the
emulator). Phase 1 downloads a 500 MB recording through it, sampling its RSS every 50 ms.
Phase 2 sends requests with ``wrk`` (16 connections) in chunks, sampling RSS after each, until
the request count is reached (120,000 in ``make bench``; 1,000,000 with ``--soak``, i.e.
``make soak``): growth after the first quarter of them (the warm-up) would be a leak.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time

import httpx

from bench import parts
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import recording_sha256, start_emulator
from tests.support.proxy import APP_KEY

DOWNLOAD_BYTES = 500 * 1024 * 1024
RECORDING_ID = "700000001"
REQUESTS = 120_000
SOAK_REQUESTS = 1_000_000
QUICK_REQUESTS = 30_000
CHUNK_SECONDS = 10.0
CONNECTIONS = 16
GROWTH_LIMIT_MIB = 5.0  # growth after warm-up beyond this counts as growth
MIB = 1024 * 1024


def download(target: parts.Target) -> dict[str, float]:
    pid = target.pids[0]
    path = (f"/restapi/v1.0/account/~/recording/{RECORDING_ID}/content"
            f"?size={DOWNLOAD_BYTES}")
    before = parts.rss_bytes(pid)
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            with contextlib.suppress(OSError, RuntimeError):
                peak = max(peak, parts.rss_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    digest, received = hashlib.sha256(), 0
    started = time.monotonic()
    try:
        with httpx.Client(base_url=target.url, timeout=120,
                          headers={"Authorization": f"Bearer {APP_KEY}"}) as http, \
                http.stream("GET", path) as answer:
            if answer.status_code != 200:
                raise RuntimeError(f"download answered {answer.status_code}")
            for chunk in answer.iter_bytes(1024 * 1024):
                digest.update(chunk)
                received += len(chunk)
    finally:
        stop.set()
        sampler.join(5)
    elapsed = time.monotonic() - started
    if received != DOWNLOAD_BYTES or digest.hexdigest() != recording_sha256(
            RECORDING_ID, DOWNLOAD_BYTES):
        raise RuntimeError(f"download corrupted: {received} bytes")
    after = parts.rss_bytes(pid)
    print(f"memory: 500 MB in {elapsed:.1f} s, RSS {before / MIB:.1f} → peak {peak / MIB:.1f} "
          f"→ {after / MIB:.1f} MiB", flush=True)
    return {"before": before, "peak": peak, "after": after, "seconds": elapsed}


def steady(target: parts.Target, requests: int) -> list[tuple[int, int]]:
    """(requests so far, RSS) after each chunk, starting with (0, RSS before)."""
    pid = target.pids[0]
    samples = [(0, parts.rss_bytes(pid))]
    done = 0
    deadline = time.monotonic() + requests / 300 + 60  # bounded even if the proxy crawls
    while done < requests and time.monotonic() < deadline:
        result = parts.wrk(target.url, CONNECTIONS, CHUNK_SECONDS)
        if result.errors:
            raise RuntimeError(f"{result.errors} requests failed during the memory run")
        done += result.requests
        samples.append((done, parts.rss_bytes(pid)))
        print(f"memory: {done:,} requests, RSS {samples[-1][1] / MIB:.1f} MiB", flush=True)
    if done < requests:
        raise RuntimeError(f"only {done:,} of {requests:,} requests within the time bound")
    return samples


def render(dl: dict[str, float], samples: list[tuple[int, int]]) -> str:
    total = samples[-1][0]
    # warm-up: the first quarter of the requests (connections, caches, allocator arenas and the
    # interpreter's free lists reach their working size); growth after it would be a leak
    warm_at, warm = next((n, rss) for n, rss in samples[1:] if n >= total / 4)
    final = samples[-1][1]
    growth = (final - warm) / MIB
    top = max(rss for _, rss in samples[1:])
    shown = _evenly(samples, 8)
    rows = [(f"{n:,}", f"{rss / MIB:.1f}") for n, rss in shown]
    return "\n".join([
        "One tokenproxy process in front of the nginx upstream; RSS from `/proc/PID/status`.",
        "",
        f"**500 MB streamed download** (a recording, through nginx from the emulator, read "
        f"by the client in 1 MiB chunks, digest checked): {dl['seconds']:.1f} s "
        f"({DOWNLOAD_BYTES / MIB / dl['seconds']:.0f} MiB/s). RSS before "
        f"{dl['before'] / MIB:.1f} MiB, peak during (sampled every 50 ms) "
        f"{dl['peak'] / MIB:.1f} MiB (+{(dl['peak'] - dl['before']) / MIB:.1f} MiB), after "
        f"{dl['after'] / MIB:.1f} MiB: the body streams through, it is never held.",
        "",
        f"**{total:,} requests** (`wrk -t1 -c{CONNECTIONS}` in {CHUNK_SECONDS:g} s chunks, "
        "RSS sampled after each chunk):",
        "",
        table(("requests so far", "RSS MiB"), rows),
        "",
        f"After the warm-up (the first quarter: {warm_at:,} requests) RSS was "
        f"{warm / MIB:.1f} MiB; at the end {final / MIB:.1f} MiB (highest {top / MIB:.1f} MiB): "
        f"growth {growth:+.1f} MiB over the last {total - warm_at:,} requests — "
        + ("no growth (within ±" if abs(growth) <= GROWTH_LIMIT_MIB else "**growth** (beyond ±")
        + f"{GROWTH_LIMIT_MIB:g} MiB).",
    ])


def _evenly(samples: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    if len(samples) <= count:
        return samples
    step = (len(samples) - 1) / (count - 1)
    return [samples[round(i * step)] for i in range(count)]


def run(options: RunOptions) -> str:
    parts.require_tools("nginx", "wrk")
    requests = (SOAK_REQUESTS if options.soak
                else QUICK_REQUESTS if options.quick else REQUESTS)
    with start_emulator("--auth-rate", "0") as emulator, \
            parts.nginx_upstream(emulator.url) as upstream, \
            parts.tokenproxy(options.workdir, upstream.url) as target:
        dl = download(target)
        samples = steady(target, requests)
    return render(dl, samples)


SCENARIO = Scenario(
    name="memory",
    title="Memory: a 500 MB streamed download and a long run of requests",
    summary="RSS during a 500 MB download and over 120k requests (1M with --soak)",
    run=run,
)
