"""The open-loop load of the issue-17 acceptance tests: APPS apps of one account each send the
Light, Medium and Heavy operations at 3x the group's limit / APPS (a request does not wait for
the previous one), to one proxy or spread over several (replicas); what came back is counted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

WINDOW = 4.0  # seconds: the platform's 60, shortened
LIMITS = {"Light": 25, "Medium": 20, "Heavy": 5}  # the platform's defaults, halved
APPS = 20
EXT = "/restapi/v1.0/account/~/extension/~"
OPERATIONS = {  # group -> (method, path, body): operations of the published table
    "Light": ("GET", EXT, None),
    "Medium": ("POST", EXT + "/sms", {"from": {"phoneNumber": "+15550100"},
                                      "to": [{"phoneNumber": "+15550101"}], "text": "hi"}),
    "Heavy": ("GET", EXT + "/call-log", None),
}


def app_key(n: int) -> str:
    return f"rate-app-key-{n:04d}-0123456789"


def emulator_args(penalty: float = 2.0, limits: dict[str, int] | None = None,
                  window: float = WINDOW) -> tuple[str, ...]:
    """The emulator enforcing ``limits`` (LIMITS) per WINDOW, with a ``penalty`` every request
    restarts."""
    limits_arg = ",".join(f"{g}={n}" for g, n in (limits or LIMITS).items())
    return ("--auth-rate", "0", "--api-rate", "enforce", "--api-limits", limits_arg,
            "--api-window", str(window), "--api-penalty", str(penalty))


@dataclass
class Outcome:
    served_app: Counter[str] = field(default_factory=Counter)
    served_group: Counter[str] = field(default_factory=Counter)
    refusal_times: list[float] = field(default_factory=list)  # how long each proxy 429 took
    platform_429: Counter[str] = field(default_factory=Counter)  # by group, straight from it
    proxy_429: Counter[str] = field(default_factory=Counter)  # by group, TPX-RATE-LIMITED
    unexpected: list[str] = field(default_factory=list)
    elapsed: float = 0.0


async def _offer(urls: list[str], seconds: float, window: float, limits: dict[str, int],
                 bearer: Callable[[int], str], platform_429_expected: bool) -> Outcome:
    outcome = Outcome()
    started = time.monotonic()

    async def one(http: httpx.AsyncClient, app: str, group: str) -> None:
        method, path, body = OPERATIONS[group]
        sent = time.monotonic()
        try:
            answer = await http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            outcome.unexpected.append(f"{app} {group}: {type(exc).__name__}")
            return
        if answer.status_code == 429 and platform_429_expected \
                and "x-tokenproxy-error" not in answer.headers:
            outcome.platform_429[group] += 1
        elif answer.status_code == 429:
            if answer.headers.get("x-tokenproxy-error") != "TPX-RATE-LIMITED" \
                    or answer.json().get("errorCode") != "CMN-301" \
                    or int(answer.headers.get("retry-after", "0")) < 1:
                outcome.unexpected.append(f"{app} {group}: a 429 not from the proxy: "
                                          f"{answer.text}")
            outcome.refusal_times.append(time.monotonic() - sent)
            outcome.proxy_429[group] += 1
        elif answer.status_code >= 500 or answer.status_code == 401:
            outcome.unexpected.append(f"{app} {group}: {answer.status_code} "
                                      f"{answer.text[:200]}")
        else:
            outcome.served_app[app] += 1
            outcome.served_group[group] += 1

    async def app_loop(n: int) -> None:
        app = f"app{n:02d}"
        async with httpx.AsyncClient(base_url=urls[n % len(urls)], timeout=30,
                                     headers={"Authorization": f"Bearer {bearer(n)}"}) as http:
            tasks: list[asyncio.Task[None]] = []
            start = time.monotonic()
            # this app's arrivals per group: 3x the limit shared by the apps, phase-shifted
            schedule = sorted(
                (start + (i + n / APPS) * window * APPS / (3 * limit), group)
                for group, limit in limits.items()
                for i in range(int(seconds / window * 3 * limit / APPS)))
            for at, group in schedule:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                tasks.append(asyncio.create_task(one(http, app, group)))
            await asyncio.gather(*tasks)

    await asyncio.gather(*(app_loop(n) for n in range(APPS)))
    outcome.elapsed = time.monotonic() - started
    return outcome


def offer(urls: list[str], seconds: float, *, window: float = WINDOW,
          limits: dict[str, int] | None = None, bearer: Callable[[int], str] = app_key,
          platform_429_expected: bool = False) -> Outcome:
    """Run the load for ``seconds`` (app ``n`` talks to ``urls[n % len(urls)]`` with
    ``Authorization: Bearer bearer(n)``); ``platform_429_expected``: the apps talk to the
    platform itself (the baseline), its 429s are counted, not unexpected."""
    return asyncio.run(_offer(urls, seconds, window, limits or LIMITS, bearer,
                              platform_429_expected))


def warm_up(url: str, window: float = WINDOW) -> None:
    """One request per group (token acquired, each group's limits learned), then a window's
    rest so the load starts on empty windows."""
    with httpx.Client(base_url=url, timeout=10,
                      headers={"Authorization": f"Bearer {app_key(0)}"}) as http:
        for group, (method, path, body) in OPERATIONS.items():
            assert http.request(method, path, json=body).status_code == 200, group
    time.sleep(window * (1 + 0.2) + 0.2)  # beyond the widest margin (20 %)
