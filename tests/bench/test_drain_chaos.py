"""The pure parts of the drain and chaos scenarios: the load generator's reading of answers and
its tallies, the metric and failure-window aggregation. No process is started here."""

from __future__ import annotations

import pytest

from bench import chaos, drain, load


def test_parse_head_reads_status_and_lowercase_headers() -> None:
    status, headers = load.parse_head(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
        b"Content-Length: 12\r\nX-Odd:no-space")
    assert status == 401
    assert headers == {"content-type": "application/json", "content-length": "12",
                       "x-odd": "no-space"}


@pytest.mark.parametrize("head", [b"", b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc OK", b"HTTP/2 200"])
def test_parse_head_refuses_what_is_not_http1(head: bytes) -> None:
    with pytest.raises(ValueError):
        load.parse_head(head)


@pytest.mark.parametrize(("body", "code"), [
    # the platform's API envelope (as the proxy passes it on)
    (b'{"errorCode":"TokenInvalid","message":"m","errors":[{"errorCode":"OAU-213"}]}',
     "OAU-213"),
    # the proxy's own answers
    (b'{"errorCode":"TPX-STORE-UNAVAILABLE","message":"m",'
     b'"errors":[{"errorCode":"TPX-STORE-UNAVAILABLE","message":"m"}]}', "TPX-STORE-UNAVAILABLE"),
    (b'{"errorCode":"CMN-301"}', "CMN-301"),
    (b'{"error":"invalid_grant","error_description":"x"}', "invalid_grant"),
    (b"<html>bad gateway</html>", "-"),
    (b"[1, 2]", "-"),
    (b"", "-"),
])
def test_error_code(body: bytes, code: str) -> None:
    assert load.error_code(body) == code


def test_outcome_kind() -> None:
    assert load.outcome_kind(200, b"{}") == "ok"
    assert load.outcome_kind(204, b"") == "ok"
    assert load.outcome_kind(503, b'{"errorCode":"TPX-REAUTH-REQUIRED"}') \
        == "HTTP 503 TPX-REAUTH-REQUIRED"
    assert load.outcome_kind(502, b"") == "HTTP 502 -"


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert load.percentile(values, 50) == 50.0
    assert load.percentile(values, 99) == 99.0
    assert load.percentile(values, 100) == 100.0
    assert load.percentile([7.0], 99) == 7.0
    assert load.percentile([], 50) != load.percentile([], 50)  # NaN


def test_tally_and_summary() -> None:
    tally = load.Tally(started=1000.0)
    tally.record("ok", 2.0, "a", when=1000.2)
    tally.record("ok", 4.0, "b", when=1000.9)
    tally.record("conn refused", None, "a", when=1001.5)
    tally.record("HTTP 401 OAU-129", 9.0, "b", when=1003.0)
    out = load.summarize(tally, ended=1004.0)
    assert out["requests"] == 4
    assert out["outcomes"] == {"ok": 2, "conn refused": 1, "HTTP 401 OAU-129": 1}
    assert out["per_second"] == {"0": [2, 0], "1": [0, 1], "3": [0, 1]}
    assert out["failures"] == [(1001.5, "conn refused"), (1003.0, "HTTP 401 OAU-129")]
    assert out["failures_truncated"] is False
    assert out["p50_ms"] == 4.0  # refused requests have no latency
    assert out["by_target"] == {"a": 2, "b": 2}
    assert load.failures_by_kind(out["outcomes"]) == {"HTTP 401 OAU-129": 1, "conn refused": 1}


def test_failure_window() -> None:
    failures = [(10.0, "a"), (11.5, "b"), (14.0, "c"), (20.0, "d")]
    assert load.failure_window(failures, 10.0, 15.0) == (3, 0.0, 4.0)
    assert load.failure_window(failures, 15.0, 20.0) == (0, None, None)  # end excluded


def test_event_windows_stop_at_the_next_event_and_the_horizon() -> None:
    events = [chaos.Event(100.0, "replica", "r", end=103.0),
              chaos.Event(110.0, "primary", "p", end=112.0),
              chaos.Event(200.0, "revoke", "v", end=200.0)]
    failures = [(100.5, "x"), (104.0, "x"), (110.1, "y"), (141.0, "y"), (150.0, "z"),
                (201.0, "v")]
    windows = chaos.event_windows(events, failures, run_end=210.0)
    assert [(e.detail, n, first, last, dict(kinds)) for e, n, first, last, kinds in windows] \
        == [("r", 2, 0.5, 4.0, {"x": 2}),  # until the next event at 110
            ("p", 2, pytest.approx(0.1), 31.0, {"y": 2}),  # until 112 + 30 s: not 150
            ("v", 1, 1.0, 1.0, {"v": 1})]


def test_metric_labels_summed_by_value() -> None:
    series = {'{account="main",outcome="success"}': 3.0,
              '{account="other",outcome="success"}': 2.0,
              '{account="main",outcome="failed"}': 1.0}
    assert drain.by_label(series, "outcome") == {"success": 5.0, "failed": 1.0}


def test_token_401s_count_only_token_codes() -> None:
    counters = {"api_401_by_code": {"OAU-129": 4, "OAU-213": 1, "AGW-401": 7, "OAU-149": 2}}
    assert drain.token_401s(counters) == 5

