"""The benchmark suite's readers of its tools' output (wrk, hey, py-spy) and its document
writer: a misread figure would put wrong numbers in docs/benchmarks.md. No timing here: the
benchmarks themselves run in `make bench`, never in `make test`."""

from __future__ import annotations

import pytest

from bench import parts, stats
from bench.registry import by_name
from bench.replicas import classify

WRK = """\
Running 5s test @ http://127.0.0.1:8080/restapi/v1.0/account/~/extension/~
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.10ms    3.20ms  45.00ms   80.00%
    Req/Sec     1.32k   100.00     1.50k    70.00%
  Latency Distribution
     50%   11.95ms
     75%   13.00ms
     90%   15.00ms
     99%  850.00us
  6336 requests in 5.00s, 3.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1265.53
Transfer/sec:    655.00KB
"""

HEY = """\
Summary:
  Total:\t2.3012 secs
  Slowest:\t3.4808 secs
  Fastest:\t1.9087 secs
  Average:\t2.4000 secs
  Requests/sec:\t434.5

Latency distribution:
  10% in 1.9251 secs
  50% in 2.2766 secs
  99% in 3.4421 secs

Status code distribution:
  [200]\t995 responses
  [503]\t2 responses

Error distribution:
  [3]\tGet "http://127.0.0.1:1/": dial tcp 127.0.0.1:1: connect: connection refused
"""


def test_wrk_output_is_read_with_units_and_errors() -> None:
    result = parts.parse_wrk(WRK)
    assert result.requests == 6336
    assert result.rps == pytest.approx(1265.53)
    assert result.p50_ms == pytest.approx(11.95)
    assert result.p99_ms == pytest.approx(0.85)  # microseconds converted
    assert result.errors == 3 + 4  # socket errors plus non-2xx answers


def test_wrk_output_without_figures_is_an_error() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        parts.parse_wrk(WRK.replace("Requests/sec:   1265.53\n", ""))
    with pytest.raises(ValueError, match="unreadable"):
        parts.parse_wrk(WRK.replace("11.95ms", "11.95xs"))


def test_hey_output_counts_statuses_and_failures() -> None:
    result = parts.parse_hey(HEY)
    assert result.statuses == {200: 995, 503: 2}
    assert result.errors == 3
    assert (result.p50_ms, result.p99_ms, result.slowest_ms) == pytest.approx(
        (2276.6, 3442.1, 3480.8))


def test_profile_samples_are_attributed_to_the_addon_inclusively() -> None:
    raw = "\n".join([
        # start-up frames are on every stack: they do not make a sample the addon's
        "<module> (proxy_addon/__main__.py:7);main (proxy_addon/cli/main.py:240);"
        "run (proxy_addon/cli/run.py:70);"
        "_run_once (asyncio/base_events.py:2027);handle_event (mitmproxy/proxy/layer.py:157) 50",
        "<module> (proxy_addon/__main__.py:7);trigger_event (mitmproxy/addonmanager.py:291);"
        "Identify.requestheaders (proxy_addon/gateway/identify.py:125);"
        "Headers.__setitem__ (mitmproxy/coretypes/multidict.py:40) 6",
        "<module> (proxy_addon/__main__.py:7);"
        "LinkRewriter.rewrite (proxy_addon/gateway/links.py:52) 4",
        "<module> (proxy_addon/__main__.py:7);select (selectors.py:452) 40",
        "garbage line without a count",
    ])
    total, addon, mitm, functions = classify(raw)
    assert (total, addon, mitm) == (100, 10, 50)
    assert functions == {"Identify.requestheaders (proxy_addon/gateway/identify.py)": 6,
                         "LinkRewriter.rewrite (proxy_addon/gateway/links.py)": 4}


def test_stats_helpers() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.spread([1000.0, 1200.0, 1100.0]) == "1,100 (1,000-1,200)"
    assert stats.fmt_ratio(stats.ratio(1.0, 0.0)) == "n/a"
    assert stats.fmt_ratio(1.6249) == "1.62x"
    with pytest.raises(ValueError):
        stats.median([])


def test_every_issue_scenario_is_registered() -> None:
    assert list(by_name()) == ["throughput", "storm", "fleet", "memory", "replicas", "drain",
                              "chaos", "transport", "scale", "ratelimit", "events"]


def test_rewriting_a_section_keeps_the_hand_written_notes_after_it(tmp_path) -> None:
    from bench.report import render_section, update_document

    doc = tmp_path / "benchmarks.md"
    facts = {"Date": "d1", "tokenproxy": "t"}
    first = {n: render_section(n, n.upper(), "cmd", facts, f"old {n}") for n in ("a", "b")}
    update_document(doc, facts, first, ["a", "b"])
    doc.write_text(doc.read_text().replace("<!-- bench:end a -->\n",
                                           "<!-- bench:end a -->\n\nWhat run 1 found.\n"))
    update_document(doc, facts, {"a": render_section("a", "A", "cmd", facts, "new a")},
                    ["a", "b"])
    text = doc.read_text()
    assert "new a" in text and "old a" not in text and "old b" in text
    assert text.index("new a") < text.index("What run 1 found.") < text.index("old b")
