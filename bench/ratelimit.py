"""Scenario ``ratelimit`` (issue 17): 20 apps of one account offer 3x the Light, Medium and
Heavy limits, straight to the platform (the baseline) and through tokenproxy.

The emulator enforces the platform's API limits per (user, app, group) with a penalty that every
request made during it restarts (``--api-rate enforce``), the window shortened to WINDOW
seconds. The apps send open loop (a request does not wait for the previous one), each group at
3x its limit shared by the apps (``tests/ratelimit/load.py``):

- **straight to the platform**: the apps share the account's access token (one session, as
  behind any token-sharing setup) and send as they like; the platform's penalties decide;
- **through tokenproxy** (``[rate_limits] mode = "enforce"``, ``max_wait`` MAX_WAIT s): the
  proxy queues, fairly, and answers the rest 429 itself.

Reported per group: requests the platform served, the platform's 429s, the proxy's 429s, and
the share of the group's budget used (served over limit x windows).
"""

from __future__ import annotations

import time

import httpx

from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.ratelimit.load import APPS, LIMITS, Outcome, app_key, emulator_args, offer, warm_up
from tests.support.emulator import start_emulator
from tests.support.proxy import client, jwt_account, start_proxy

WINDOW = 4.0  # seconds (the platform's: 60) — the load's own window, see tests/ratelimit/load.py
WINDOWS = 10
QUICK_WINDOWS = 3
MAX_WAIT = 3.0
DIRECT, PROXY = "straight to the platform", "through tokenproxy"


def platform_token(emulator_url: str) -> str:
    """An access token straight from the emulator's token endpoint (the demo JWT account)."""
    answer = httpx.post(emulator_url + "/restapi/oauth/token", timeout=10,
                        auth=("demo-client-id", "demo-client-secret"),
                        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                              "assertion": "demo-jwt-credential"})
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


def _direct(seconds: float) -> tuple[Outcome, dict]:
    with start_emulator(*emulator_args(penalty=WINDOW)) as emulator:
        token = platform_token(emulator.url)
        time.sleep(0.2)
        emulator.reset_counters()
        outcome = offer([emulator.url], seconds, bearer=lambda _n: token,
                        platform_429_expected=True)
        return outcome, emulator.counters()


def _through_proxy(options: RunOptions, seconds: float) -> tuple[Outcome, dict]:
    with start_emulator(*emulator_args(penalty=WINDOW)) as emulator:
        proxy = start_proxy(options.workdir, emulator.url, accounts=[jwt_account()],
                            clients=[client(f"app{n:02d}", key=app_key(n)) for n in range(APPS)],
                            rate_limits={"mode": "enforce", "max_wait": MAX_WAIT})
        try:
            warm_up(proxy.url)
            emulator.reset_counters()
            outcome = offer([proxy.url], seconds)
            counters = emulator.counters()
        finally:
            proxy.stop()
        return outcome, counters


def run(options: RunOptions) -> str:
    windows = QUICK_WINDOWS if options.quick else WINDOWS
    seconds = WINDOW * windows
    results = {DIRECT: _direct(seconds), PROXY: _through_proxy(options, seconds)}
    rows = []
    for target, (outcome, counters) in results.items():
        for group, limit in LIMITS.items():
            served = counters["api_served_by_group"].get(group, 0)
            budget = limit * outcome.elapsed / WINDOW
            rows.append((f"{target} — {group}", f"{served:,}",
                         f"{counters['api_429_by_group'].get(group, 0):,}",
                         f"{outcome.proxy_429.get(group, 0):,}", f"{served / budget:.0%}"))
    proxy_outcome, proxy_counters = results[PROXY]
    direct_outcome, direct_counters = results[DIRECT]
    refused_by_proxy = len(proxy_outcome.refusal_times)
    served_total = {t: sum(c["api_served_by_group"].values()) for t, (_, c) in results.items()}
    shares = [proxy_outcome.served_app[f"app{n:02d}"] for n in range(APPS)]
    fair = sum(shares) / APPS
    deviation = max(abs(share - fair) / fair for share in shares) if fair else 0.0
    lines = [
        f"The emulator enforces {', '.join(f'{g} {n}' for g, n in LIMITS.items())} requests "
        f"per {WINDOW:g} s window per (user, app, group) with a {WINDOW:g} s penalty that every "
        f"request during it restarts (`--api-rate enforce`). {APPS} apps of one account offer "
        f"3x each group's limit, open loop, for {windows} windows "
        f"(`tests/ratelimit/load.py`). Straight to the platform the apps share the account's "
        f"access token; through tokenproxy (`mode = \"enforce\"`, `max_wait = {MAX_WAIT:g}`) "
        "they use their client keys.",
        "",
        table(["target — group", "served by the platform", "platform 429s", "proxy 429s",
               "budget used"], rows),
        "",
        f"- Served in all: {served_total[DIRECT]:,} straight to the platform, "
        f"{served_total[PROXY]:,} through tokenproxy "
        f"({served_total[PROXY] / max(1, served_total[DIRECT]):.1f}x).",
        f"- Platform 429s: {sum(direct_counters['api_429_by_group'].values()):,} straight "
        f"(every one restarting its group's penalty), "
        f"{sum(proxy_counters['api_429_by_group'].values()):,} through tokenproxy.",
        f"- Fairness (equal weights): each app served {min(shares)}-{max(shares)} requests "
        f"through tokenproxy, at most {deviation:.0%} from the equal share ({fair:.1f}).",
        "- Budget used: requests served over limit x (run time / window); a sliding window "
        "starts empty, so a run can serve one window's worth beyond that (over 100 %).",
        f"- The proxy answered {refused_by_proxy:,} requests 429 itself (each within "
        f"max_wait: the slowest after {max(proxy_outcome.refusal_times, default=0):.2f} s); "
        f"unexpected answers: {len(proxy_outcome.unexpected) + len(direct_outcome.unexpected)}.",
    ]
    return "\n".join(lines)


SCENARIO = Scenario(
    name="ratelimit",
    title="API rate limits: 20 apps of one account at 3x the limits, straight vs through "
          "tokenproxy",
    summary="20 apps offer 3x Light/Medium/Heavy: platform 429s and served requests, straight "
            "to the emulator (enforcing) vs through tokenproxy (enforce mode)",
    run=run,
)
