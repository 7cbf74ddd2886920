"""[[clients]] keys that rotate (several keys, ``key_sha256``) and ``allow`` lists (issue 19,
items 3 and 4): what the parser accepts and the exact message for what it refuses; how allow
patterns match, path tricks included."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from proxy_addon.config import ConfigError, parse_config
from proxy_addon.config.allow import AllowList
from proxy_addon.config.model import key_digest
from tests.config.test_config import ENV, GOOD

OLD, NEW = "old-app-key-0123456789", "new-app-key-0123456789"


def parse(**client: Any) -> Any:
    doc = tomllib.loads(GOOD)
    entry = {k: v for k, v in doc["clients"][0].items() if k != "key"}
    doc["clients"] = [{**entry, **client}]
    return parse_config(copy.deepcopy(doc), "c.toml", ENV)


def refused(**client: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse(**client)
    return str(info.value)


def test_several_keys_and_digests_identify_one_client() -> None:
    client = parse(key=OLD, keys=[NEW], key_sha256=key_digest("third-key-0123456789")).clients[0]
    assert client.digests() == (key_digest(OLD), key_digest(NEW),
                                key_digest("third-key-0123456789"))
    assert client.key.reveal() == OLD and [k.reveal() for k in client.keys] == [NEW]
    only_digest = parse(key_sha256=[key_digest(NEW).upper()]).clients[0]
    assert only_digest.digests() == (key_digest(NEW),) and only_digest.key.reveal() == ""
    config = parse(keys=[OLD, NEW])
    assert OLD in config.secret_values() and NEW in config.secret_values()  # redacted


@pytest.mark.parametrize(("client", "message"), [
    ({}, "c.toml: clients[0].key: required key is missing (or give keys / key_sha256)"),
    ({"keys": []}, "c.toml: clients[0].keys: expected a non-empty list of strings"),
    ({"keys": ["short"]}, "c.toml: clients[0].keys: too short: use at least 16 characters"),
    ({"key": OLD, "keys": [OLD]}, "c.toml: clients[0].keys: the same key is used by another "
                                  "client (or twice here)"),
    ({"key": OLD, "key_sha256": key_digest(OLD)}, "c.toml: clients[0].key_sha256: the same key "
                                                  "is used by another client (or twice here)"),
    ({"key_sha256": "abc"}, "c.toml: clients[0].key_sha256: expected the 64 hex digits of a "
                            "key's SHA-256 (`tokenproxy client-key` prints both)"),
    ({"key_sha256": 5}, "c.toml: clients[0].key_sha256: expected a hex SHA-256 digest or a list "
                        "of them"),
    ({"key": OLD, "allow": "GET /x"}, 'c.toml: clients[0].allow: expected a list of "METHOD '
                                      '/path" patterns'),
    ({"key": OLD, "allow": ["FETCH /x"]}, "c.toml: clients[0].allow[0]: the method must be one "
                                          "of GET, HEAD, POST, PUT, PATCH, DELETE, *, got "
                                          "'FETCH /x'"),
    ({"key": OLD, "allow": ["GET x"]}, "c.toml: clients[0].allow[0]: the path must be "
                                       "absolute, without query, '%' or spaces, got 'GET x'"),
    ({"key": OLD, "allow": ["GET /a?b=1"]}, "c.toml: clients[0].allow[0]: the path must be "
                                            "absolute, without query, '%' or spaces, got "
                                            "'GET /a?b=1'"),
    ({"key": OLD, "allow": ["GET /a/../b"]}, "c.toml: clients[0].allow[0]: the path may not "
                                             "have '.' or '..' segments, got 'GET /a/../b'"),
])
def test_bad_keys_and_allow_lists_are_refused(client: dict, message: str) -> None:
    assert refused(**client) == message


EXT = "/restapi/v1.0/account/~/extension/~"
ALLOW = AllowList.of((f"GET {EXT}", f"GET {EXT}/call-log*", f"POST {EXT}/sms",
                      "GET /restapi/v1.0/account/*/extension/*/message-store/**"))


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", EXT, True), ("HEAD", EXT, True), ("GET", EXT + "/", True),
    ("GET", EXT + "?view=full", True), ("POST", EXT, False),
    ("GET", EXT + "/call-log", True), ("GET", EXT + "/call-log?perPage=10", True),
    ("GET", EXT + "/call-log-sync", True), ("GET", EXT + "/call-log/123", False),
    ("POST", EXT + "/sms", True), ("post", EXT + "/sms", True), ("GET", EXT + "/sms", False),
    ("POST", EXT.upper() + "/SMS", True),  # routes compare case-insensitively
    ("POST", EXT + "/fax", False), ("DELETE", EXT + "/sms", False),
    ("GET", "/restapi/v1.0/account/1/extension/2/message-store/3/content/4", True),
    ("GET", "/restapi/v1.0/account/1/extension/2/message-store", False),
    ("GET", "/restapi/v1.0/account/1/x/extension/2/message-store/3", False),  # * is one segment
    # tricks: an encoded spelling can only fail to match, never match something else
    ("POST", EXT + "/%73ms", True),  # %73 is "s": the same resource, the same answer
    ("POST", EXT + "/sms/../fax", False), ("POST", EXT + "/sms/%2e%2e/fax", False),
    ("POST", EXT + "/sms%2f..%2ffax", False), ("POST", EXT + "/sms\\..\\fax", False),
    ("POST", EXT + "/sms%00", False), ("POST", EXT + "/%2573ms", False),
    ("GET", EXT + "/call-log/%2e%2e/%2e%2e", False),
])
def test_allow_patterns_match_the_normalised_path(method: str, path: str,
                                                  allowed: bool) -> None:
    assert ALLOW.allows(method, path) is allowed


def test_a_star_method_allows_every_method() -> None:
    assert AllowList.of(("* /restapi/v1.0/**",)).allows("DELETE", "/restapi/v1.0/a/b")
    assert not AllowList.of(("* /restapi/v1.0/**",)).allows("GET", "/restapi/oauth/wstoken")
