"""``tokenproxy run`` without ``--workers``: one process per usable core when the store can be
shared (issue 16), one otherwise."""

from __future__ import annotations

import os

import pytest

from proxy_addon.cli.main import _parser as build_parser
from proxy_addon.cli.workers import resolve_workers, usable_cores
from proxy_addon.config import parse_config

BASE = {"proxy": {"upstream": "http://127.0.0.1:9"},
        "accounts": [{"name": "main", "client_id": "id", "client_secret": "s", "grant": "jwt",
                      "jwt": "j"}],
        "clients": [{"name": "app", "account": "main", "key": "k" * 24}]}


def config(backend: str):  # type: ignore[no-untyped-def]
    store = {"backend": backend, **({"path": "/tmp/x.db"} if backend == "sqlite" else {}),
             **({"url": "redis://127.0.0.1:6379/0"} if backend == "redis" else {})}
    return parse_config({**BASE, "store": store}, "c.toml", {})


def test_the_default_is_auto() -> None:
    args = build_parser().parse_args(["run", "--config", "c.toml"])
    assert args.workers == "auto"
    assert build_parser().parse_args(["run", "-c", "c", "--workers", "3"]).workers == 3


@pytest.mark.parametrize(("backend", "shared"), [("sqlite", True), ("redis", True),
                                                 ("memory", False)])
def test_auto_is_one_per_core_for_a_shared_store_only(backend: str, shared: bool) -> None:
    expected = usable_cores() if shared else 1
    assert resolve_workers("auto", config(backend), worker=False) == expected
    assert resolve_workers(3, config(backend), worker=False) == 3  # as asked
    assert resolve_workers("auto", config(backend), worker=True) == 1  # a worker is one


def test_usable_cores_follow_the_affinity_mask() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))
