"""``[proxy] metrics_per_account = "folded"`` (issue 16, scale): with many accounts the full
per-account set is 91 samples an account (10,000 accounts: a 21 s, 70 MiB scrape). Folded,
counters and histograms of all accounts are one series (``account="_all"``) and an account
keeps its own gauges only while it needs attention, so the alerts still name it."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest

from proxy_addon.config import parse_config
from proxy_addon.ops.metrics import Metrics, PoolObserver

ACCOUNTS = 1000


def config():  # type: ignore[no-untyped-def]
    return parse_config({
        "proxy": {"upstream": "http://127.0.0.1:9"},
        "accounts": [{"name": f"a{i}", "client_id": f"id{i}", "client_secret": "s",
                      "grant": "jwt", "jwt": "j"} for i in range(ACCOUNTS)],
        "clients": [{"name": f"c{i}", "account": f"a{i}", "key": f"key-{i:020d}"}
                    for i in range(ACCOUNTS)]}, "c.toml", {})


def snapshot(name: str, state: str, refresh_left: float | None) -> dict[str, object]:
    return {"account": name, "state": state, "access_expires_in": 3000.0,
            "refresh_expires_in": refresh_left, "live_sessions": 1, "max_live_tokens": 1,
            "last_refresh": 1.0}


def fake_pool() -> SimpleNamespace:
    """Every account healthy with a week of refresh token left, but two."""
    snaps = {f"a{i}": snapshot(f"a{i}", "healthy", 604800.0) for i in range(ACCOUNTS)}
    snaps["a5"] = snapshot("a5", "reauth_required", None)
    snaps["a6"] = snapshot("a6", "healthy", 3600.0)  # its refresh token ends within the hour
    return SimpleNamespace(accounts={k: SimpleNamespace(snapshot=lambda s=s: s)
                                     for k, s in snaps.items()})


def scrape(folded: bool) -> list[str]:
    metrics = Metrics(folded=folded)
    metrics.prepare(config(), "sqlite")
    metrics.watch_pool(fake_pool())  # type: ignore[arg-type]
    observer = PoolObserver(metrics)
    observer.renewal("a7", "failed")
    metrics.requests.labels("c7", "a7", "2xx").inc()
    return [line for line in generate_latest(metrics.registry).decode().splitlines()
            if line and not line.startswith("#")]


def test_folded_metrics_keep_one_series_per_metric_and_the_accounts_needing_attention() -> None:
    full, folded = scrape(False), scrape(True)
    assert len(full) > 80 * ACCOUNTS  # the full set grows with every account
    assert len(folded) < 300, len(folded)  # folded: a constant, plus the two below
    assert 'tokenproxy_refreshes_total{account="_all",outcome="failed"} 1.0' in folded
    assert 'tokenproxy_requests_total{account="_all",client="_all",status_class="2xx"} 1.0' \
        in folded
    assert 'tokenproxy_account_state{account="a5",state="reauth_required"} 1.0' in folded
    assert any(line.startswith('tokenproxy_refresh_token_remaining_seconds{account="a6"}')
               for line in folded)
    assert not any('account="a7"' in line for line in folded)  # routine: folded away
    assert 'tokenproxy_accounts{state="healthy"} 999.0' in folded
    assert 'tokenproxy_accounts{state="reauth_required"} 1.0' in folded
    assert 'tokenproxy_refreshes_total{account="a7",outcome="failed"} 1.0' in full
