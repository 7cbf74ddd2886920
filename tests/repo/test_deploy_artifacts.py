"""Deployment artifacts checked against the code they deploy.

The Dockerfile, .dockerignore, deploy/config/tokenproxy.toml, the compose stack
(deploy/compose: compose.yaml, prometheus.yml, Grafana provisioning, .env.example) and the
Kubernetes manifests (deploy/k8s) are parsed and cross-checked: every file they reference
exists, ports and paths agree with the container config (loaded by the project's own
``load_config``), every credential comes from the environment / a Secret, no secret value is
inlined anywhere, Prometheus scrapes each replica's metrics port and loads dashboards/alerts.yml,
Grafana is provisioned with dashboards/. Then a real proxy runs with the container config
(listen addresses moved to loopback) against the real emulator and a real redis-server: the
probe paths named by the manifests, the ServiceMonitor and the Dockerfile's HEALTHCHECK
(its very command) answer 200, and what the process writes lands on writable mounts only.
External validators are used when present: ``promtool check config``, ``kubernetes-validate``
(offline Kubernetes JSON schemas), ``kubectl kustomize``, ``docker compose config``; each test
that needs one skips with the reason when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet

from proxy_addon.config import ConfigError, load_config, parse_config
from proxy_addon.store.factory import StoreConfigError, make_cipher
from tests.support.emulator import Emulator
from tests.support.proxy import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_JWT,
    Proxy,
    render_config,
    start_proxy_with_config,
)
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINER_CONFIG = DEPLOY / "config" / "tokenproxy.toml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S = DEPLOY / "k8s"
DASHBOARDS = ROOT / "dashboards"

FAKE_ENV = {
    "RC_CLIENT_ID": "fake-client-id",
    "RC_CLIENT_SECRET": "fake-client-secret-value",
    "RC_JWT": "fake-jwt-value",
    "LEGACY_APP_KEY": "fake-legacy-app-key-0123456789",
    "TOKENPROXY_REDIS_URL": "redis://:fake-redis-password@redis.invalid:6379/0",
    "TOKENPROXY_STORE_KEY": Fernet.generate_key().decode(),
    "TOKENPROXY_ADMIN_TOKEN": "fake-admin-token-0123456789",
}
SCRAPERS = ("ServiceMonitor", "compose prometheus.yml", "k8s prometheus.io/path")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|JWT|CREDENTIAL|REDIS_URL|_KEY$|_AUTH$")


# --------------------------------------------------------------------------------------------
# small parsers


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def yaml_doc(path: Path) -> dict[str, Any]:
    (doc,) = yaml_docs(path)
    return doc


def container_config_doc() -> dict[str, Any]:
    return tomllib.loads(CONTAINER_CONFIG.read_text())


def toml_strings(value: Any) -> Iterator[str]:
    """Every string value in a parsed TOML document (comments are not values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from toml_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from toml_strings(item)


def config_env_vars() -> tuple[set[str], set[str]]:
    """(required, optional) environment variables the container config reads: ``${VAR}``
    without a default, or with one; plus the store key's variable (required: no plaintext)."""
    doc = container_config_doc()
    required: set[str] = set()
    optional: set[str] = set()
    for text in toml_strings(doc):
        for name, op, _ in ENV_REF.findall(text):
            (optional if op in (":-", "-") else required).add(name)
    store = doc.get("store", {})
    if not store.get("allow_plaintext", False):
        required.add(store.get("key_env", "TOKENPROXY_STORE_KEY"))
    if "admin_token_env" in doc.get("proxy", {}):
        required.add(doc["proxy"]["admin_token_env"])
    return required, optional - required


def loaded_config(environ: dict[str, str] | None = None) -> Any:
    return load_config(CONTAINER_CONFIG, dict(FAKE_ENV if environ is None else environ))


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        result.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return result


def stages(instructions: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, instructions from its FROM on) of every build stage, in order; unnamed stages
    are named by their index, as Docker does."""
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for op, args in instructions:
        if op == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(result))
            result.append((name, []))
        assert result, "an instruction before the first FROM"
        result[-1][1].append((op, args))
    return result


def stage(instructions: list[tuple[str, str]], target: str | None = None
          ) -> list[tuple[str, str]]:
    """The instructions that make image ``target`` (default: the last stage, what `docker
    build .` produces): the stage's own, after those of the stages it is built FROM."""
    named = dict(stages(instructions))
    own = named[target] if target is not None else stages(instructions)[-1][1]
    base = own[0][1].split()[0]
    if base in named and named[base] is not own:
        return stage(instructions, base) + own[1:]
    return own


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return stage(instructions)


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not exec form (JSON array): {args!r}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--from=build a b`` -> ({'from': 'build'}, ['a', 'b'])."""
    flags: dict[str, str] = {}
    words = args.split()
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """Docker's .dockerignore rules: ``*``/``?`` stop at ``/``, ``**`` spans directories, a
    pattern matches a path or any of its parents, ``!`` re-includes, the last match wins."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def in_build_context(relpath: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = PurePosixPath(relpath).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in patterns:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return not excluded


def dockerfile_user_home() -> tuple[int, str]:
    """(uid, home) of the user the Dockerfile creates with useradd."""
    runs = " ".join(a for op, a in final_stage(dockerfile_instructions()) if op == "RUN")
    match = re.search(r"useradd\b[^&;]*", runs)
    assert match, "the Dockerfile creates no user (useradd)"
    uid = re.search(r"--uid[ =](\d+)", match.group(0))
    home = re.search(r"--home-dir[ =](\S+)", match.group(0))
    assert uid and home, "useradd without --uid or --home-dir"
    return int(uid.group(1)), home.group(1)


def compose() -> dict[str, Any]:
    return yaml_doc(COMPOSE_FILE)


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def proxy_services() -> dict[str, dict[str, Any]]:
    """The services running ``tokenproxy run`` (the image's entrypoint is ``tokenproxy``)."""
    return {name: svc for name, svc in compose_services().items()
            if isinstance(svc.get("command"), list) and svc["command"][:1] == ["run"]}


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) of a service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"long volume syntax not handled: {volume!r}"
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE_DIR / source).resolve(), target, "ro" in mode))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Where a container path of a compose service comes from on the host (bind mounts)."""
    best: tuple[int, Path] | None = None
    for source, target, _ in bind_mounts(service):
        rel = os.path.relpath(container_path, target)
        if rel == "." or not rel.startswith(".."):
            candidate = source if rel == "." else source / rel
            if best is None or len(target) > best[0]:
                best = (len(target), candidate)
    return best[1] if best else None


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of a service's short-syntax ports."""
    result = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) == 3, f"publish with an explicit host address: {entry!r}"
        result.append((parts[0], int(parts[1]), int(parts[2])))
    return result


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def demo_values() -> set[str]:
    """The emulator's published demo credentials (config/demo.toml): not secrets."""
    demo = tomllib.loads((ROOT / "config" / "demo.toml").read_text())
    account = demo["accounts"][0]
    return {account["client_id"], account["client_secret"], account["jwt"]}


def k8s_resources() -> dict[str, dict[str, Any]]:
    """Every manifest the kustomization applies, by kind."""
    kustomization = yaml_doc(K8S / "kustomization.yaml")
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml_docs(K8S / name):
            kind = doc["kind"]
            key = kind if kind not in found else f"{kind}/{doc['metadata']['name']}"
            found[key] = doc
    return found


def deployment() -> dict[str, Any]:
    return k8s_resources()["Deployment"]


def proxy_container() -> dict[str, Any]:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tokenproxy")


def named_port(container: dict[str, Any], name: str | int) -> int:
    if isinstance(name, int):
        return name
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def services_by_name() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for key, doc in k8s_resources().items()
            if doc["kind"] == "Service"}


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def probe_paths() -> dict[str, str]:
    """Every HTTP path something outside the proxy polls on its metrics listener."""
    container = proxy_container()
    paths = {f"k8s {probe}": container[probe]["httpGet"]["path"]
             for probe in ("startupProbe", "readinessProbe", "livenessProbe") if probe in container}
    annotations = deployment()["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/path" in annotations:
        paths["k8s prometheus.io/path"] = annotations["prometheus.io/path"]
    for endpoint in k8s_resources()["ServiceMonitor"]["spec"]["endpoints"]:
        paths["ServiceMonitor"] = endpoint.get("path", "/metrics")
    for job in yaml_doc(COMPOSE_DIR / "prometheus.yml")["scrape_configs"]:
        if job["job_name"] == "tokenproxy":
            paths["compose prometheus.yml"] = job.get("metrics_path", "/metrics")
    paths["Dockerfile HEALTHCHECK"] = urlsplit(healthcheck_url()).path
    return paths


def healthcheck_command() -> list[str]:
    checks = [a for op, a in final_stage(dockerfile_instructions()) if op == "HEALTHCHECK"]
    assert len(checks) == 1, "the image needs exactly one HEALTHCHECK"
    _, words = split_flags(checks[0])
    assert words[0] == "CMD", f"HEALTHCHECK without CMD: {checks[0]!r}"
    return exec_form(checks[0][checks[0].index("["):])


def healthcheck_url(command: list[str] | None = None) -> str:
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(command or healthcheck_command()))
    assert len(urls) == 1, f"one URL expected in the health check, got {urls}"
    return urls[0]


def run_healthcheck(command: list[str], url: str, port: int) -> int:
    """Run a container health-check command here, its URL pointed at a loopback port."""
    assert command[0] == "python", f"health check not run with python: {command[0]!r}"
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", "the health check must ask the container itself"
    local = [sys.executable, *[a.replace(parts.netloc, f"127.0.0.1:{port}") for a in command[1:]]]
    assert local[1:] != command[1:], "the URL was not found in the command"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run(local, capture_output=True, timeout=30, env=env).returncode


# --------------------------------------------------------------------------------------------
# secret scanning

SECRET_PATTERNS = {
    "Fernet key": re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}="),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    "long hex": re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32,}(?![0-9A-Za-z])"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password in URL": re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]*:(?!\$\{)([^\s@/'\"]+)@"),
}
PLACEHOLDER_PASSWORD = re.compile(r"(?i)^(password|REPLACE_ME.*)$")


def secret_findings(text: str) -> list[str]:
    found = []
    for label, pattern in SECRET_PATTERNS.items():
        for match in pattern.finditer(text):
            if label == "password in URL" and PLACEHOLDER_PASSWORD.match(match.group(1)):
                continue
            found.append(f"{label}: {match.group(0)[:12]}...")
    return found


def deploy_files() -> list[Path]:
    files = [DOCKERFILE, DOCKERIGNORE]
    files += sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md"
                    and p.name != ".env")
    return files


# ============================================================================================
# the container config


def test_container_config_is_valid_and_listens_for_a_container() -> None:
    config = loaded_config()
    assert (config.proxy.listen.host, config.proxy.listen.port) == ("0.0.0.0", 8080)
    assert config.proxy.metrics_listen is not None
    assert (config.proxy.metrics_listen.host, config.proxy.metrics_listen.port) == (
        "0.0.0.0", 9464)
    # non-loopback plain HTTP is an explicit, documented choice (or TLS is configured)
    assert config.proxy.allow_plaintext_listen or config.proxy.tls_cert
    assert "allow_plaintext_listen" in CONTAINER_CONFIG.read_text().split("[accounts]")[0]
    assert config.proxy.verify_upstream_tls is True
    # links in answers name the proxy as apps reach it (required beyond loopback)
    assert config.proxy.public_url == "http://tokenproxy:8080"
    assert loaded_config({**FAKE_ENV, "PROXY_PUBLIC_URL": "https://tp.example"}
                         ).proxy.public_url == "https://tp.example"
    assert config.proxy.upstream == "https://platform.ringcentral.com"
    assert loaded_config({**FAKE_ENV, "RC_SERVER_URL": "http://emulator:9000"}
                         ).proxy.upstream == "http://emulator:9000"
    # replicas share Redis; tokens encrypted at rest
    assert config.store.backend == "redis"
    assert config.store.url is not None
    assert config.store.url.reveal() == FAKE_ENV["TOKENPROXY_REDIS_URL"]
    assert config.store.allow_plaintext is False
    assert config.store.key_env == "TOKENPROXY_STORE_KEY"
    make_cipher(config.store, FAKE_ENV)  # the store key variable is the one the Secret fills


def test_container_config_takes_every_credential_from_the_environment() -> None:
    doc = container_config_doc()
    credential_fields = {"client_secret", "jwt", "password", "refresh_token", "auth_code",
                         "code_verifier"}
    raw: list[tuple[str, str]] = [(f"accounts.{k}", v) for a in doc["accounts"]
                                  for k, v in a.items() if k in credential_fields | {"client_id"}]
    raw += [(f"clients.{c['name']}.key", c["key"]) for c in doc["clients"]]
    raw += [("store.url", doc["store"]["url"])]
    for key, value in raw:
        assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*\}", value), f"{key} is not a ${{VAR}}: {value}"
    config = loaded_config()
    revealed = set(config.secret_values())
    assert revealed <= set(FAKE_ENV.values()), "a credential does not come from the env"
    assert {FAKE_ENV["RC_CLIENT_SECRET"], FAKE_ENV["RC_JWT"], FAKE_ENV["LEGACY_APP_KEY"],
            FAKE_ENV["TOKENPROXY_REDIS_URL"]} <= revealed
    # every variable without a default is really required
    required, _ = config_env_vars()
    for name in sorted(required - {config.store.key_env}):
        env = {k: v for k, v in FAKE_ENV.items() if k != name}
        with pytest.raises(ConfigError, match=name):
            loaded_config(env)
    with pytest.raises(StoreConfigError, match=config.store.key_env):
        make_cipher(config.store, {})


def test_placeholder_env_files_cannot_start_a_proxy() -> None:
    """Applied unchanged, the templates stop the proxy at start-up instead of running it with
    public placeholder values."""
    compose_env = {**env_example(), "TOKENPROXY_REDIS_URL": FAKE_ENV["TOKENPROXY_REDIS_URL"]}
    with pytest.raises(ConfigError):
        loaded_config(compose_env)
    secret = yaml_doc(K8S / "secret.example.yaml")["stringData"]
    with pytest.raises(ConfigError, match=r"store\.url"):
        loaded_config(secret)
    config = loaded_config()
    with pytest.raises(StoreConfigError):
        make_cipher(config.store, secret)


# ============================================================================================
# Dockerfile and .dockerignore


def test_dockerfile_base_user_ports_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    stage = final_stage(instructions)
    base = stage[0][1].split()[0]
    match = re.fullmatch(r"python:3\.(\d+)-slim(?:-[a-z]+)?", base)
    assert match, f"final stage must be an official slim Python image, got {base}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert int(match.group(1)) >= int(re.search(r"3\.(\d+)", requires).group(1))
    earlier: set[str] = set()
    for name, own in stages(instructions):
        base = own[0][1].split()[0]
        assert base.startswith("python:3.") or base in earlier, f"unexpected base {own[0][1]}"
        earlier.add(name)

    users = [a for op, a in stage if op == "USER"]
    assert users, "the image runs as root (no USER)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the image runs as root"
    uid, _ = dockerfile_user_home()
    assert user == str(uid), "USER must be the numeric uid (runAsNonRoot can check it)"
    last_user = max(i for i, (op, _) in enumerate(stage) if op == "USER")
    assert not [op for op, _ in stage[last_user:] if op == "RUN"], "RUN after USER"

    config = loaded_config()
    exposed = {int(p.split("/")[0]) for op, a in stage if op == "EXPOSE" for p in a.split()}
    assert config.proxy.metrics_listen is not None
    assert exposed == {config.proxy.listen.port, config.proxy.metrics_listen.port}

    (entrypoint,) = [exec_form(a) for op, a in stage if op == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["tokenproxy"] and "tokenproxy" in scripts
    (cmd,) = [exec_form(a) for op, a in stage if op == "CMD"]
    assert cmd[:2] == ["run", "--config"]
    copies = {split_flags(a)[1][-1]: split_flags(a) for op, a in stage if op == "COPY"}
    flags, words = copies[cmd[2]]
    assert "from" not in flags and words[:-1] == ["deploy/config/tokenproxy.toml"], (
        f"CMD's config {cmd[2]} is not deploy/config/tokenproxy.toml")

    installs = [a for op, a in instructions if op == "RUN" and "pip install" in a]
    assert installs, "the package is not pip-installed"
    assert any(re.search(r"pip install\b.*\s\.(\s|$)", a) for a in installs)
    assert not any("[dev]" in a or "-e " in a for a in installs), "dev extras or editable"


def test_dockerfile_copies_existing_files_that_the_context_holds() -> None:
    patterns = dockerignore_patterns()
    sources: list[str] = []
    for op, args in dockerfile_instructions():
        if op in ("COPY", "ADD"):
            flags, words = split_flags(args)
            if "from" not in flags:
                sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY source {source} does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, f"COPY source {source} is empty"
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            assert in_build_context(rel, patterns), f"{rel} is excluded by .dockerignore"
        assert not re.search(r"(^|/)(var|\.venv|\.git)(/|$)|\.env$|\.key$|\.pem$", source)


def test_dockerignore_keeps_state_secrets_and_tooling_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sensitive = ["var/tokens.db", "var/demo-store.key", "var/demo-tokens.db",
                 "deploy/compose/.env", ".env", "server.key", "tls/tls.pem",
                 ".venv/bin/python", ".git/config", "proxy_addon/__pycache__/cli.cpython-313.pyc",
                 "tokenproxy.egg-info/PKG-INFO", "tests/config/test_config.py",
                 "deploy/k8s/secret.yaml"]
    for rel in sensitive:
        assert not in_build_context(rel, patterns), f"{rel} would be sent to the builder"
    context = {rel for rel in listed + sensitive if in_build_context(rel, patterns)}
    allowed = re.compile(r"pyproject\.toml|README\.md|proxy_addon/.+\.py|"
                         r"proxy_addon/ratelimit/platform-rate-groups\.tsv|"
                         r"emulator/pyproject\.toml|emulator/rc_emulator/.+\.py|"
                         r"emulator/rc_emulator/data/platform-rate-groups\.tsv|"
                         r"deploy/config/tokenproxy\.toml")
    assert {r for r in context if not allowed.fullmatch(r)} == set()
    assert {"pyproject.toml", "README.md", "proxy_addon/cli/main.py", "emulator/pyproject.toml",
            "emulator/rc_emulator/server.py", "deploy/config/tokenproxy.toml",
            "proxy_addon/ratelimit/platform-rate-groups.tsv"} <= context  # package data too


def test_dockerfile_has_no_secret_env_or_arg() -> None:
    for op, args in dockerfile_instructions():
        if op in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*)=", args) or args.split()[:1]
            for name in names:
                assert not SECRET_NAME.search(name.upper()), f"{op} {name} looks like a secret"
        assert not secret_findings(args), f"{op} {args[:40]} holds a secret-looking value"
        if op == "RUN":
            assert not re.search(r"keygen|openssl\s+rand", args), "a key is made at build time"


def test_dockerfile_healthcheck_asks_healthz_on_the_metrics_port() -> None:
    command = healthcheck_command()
    url = urlsplit(healthcheck_url(command))
    config = loaded_config()
    assert config.proxy.metrics_listen is not None
    assert url.path == "/healthz"
    assert url.hostname == "127.0.0.1" and url.port == config.proxy.metrics_listen.port
    assert command[:2] == ["python", "-c"], "no curl in slim images: use python -c"
    compile(command[2], "<healthcheck>", "exec")
    flags, _ = split_flags(next(a for op, a in dockerfile_instructions() if op == "HEALTHCHECK"))
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)


EMULATOR = "rc_emulator"  # the emulator's package: a distribution of its own (emulator/)
NOT_INSTALLED = "the platform emulator is not installed"


def build_stage_of(image: list[tuple[str, str]]) -> tuple[str, str]:
    """(stage name, the build stage's RUN that pip-installs the package) of an image: the stage
    the image copies its /usr/local from."""
    named = dict(stages(dockerfile_instructions()))
    (source,) = {split_flags(a)[0]["from"] for op, a in image
                 if op == "COPY" and "from" in split_flags(a)[0]
                 and split_flags(a)[1][-1] == "/usr/local"}
    (install,) = [a for op, a in named[source] if op == "RUN" and "pip install" in a]
    return source, install


def pip_installs(run: str) -> dict[str, str]:
    """{what pip installs: its --prefix} for each `pip install` of a RUN instruction."""
    found: dict[str, str] = {}
    for command in re.split(r"&&|;", run):
        words = command.split()
        if words[:2] != ["pip", "install"]:
            continue
        prefix = next(w.split("=", 1)[1] for w in words if w.startswith("--prefix="))
        (what,) = [w for w in words[2:] if not w.startswith("-")]
        found[what] = prefix
    return found


def build_context(tmp_path: Path) -> Path:
    """The build stage's COPY sources (what .dockerignore lets into the context) in a folder."""
    image = final_stage(dockerfile_instructions())
    source, _ = build_stage_of(image)
    build = dict(stages(dockerfile_instructions()))[source]
    patterns = dockerignore_patterns()
    context = tmp_path / "context"
    for op, args in build:
        if op == "COPY":
            flags, words = split_flags(args)
            assert "from" not in flags
            for item in words[:-1]:
                dest = context / (words[-1].rstrip("/") if len(words) == 2
                                  and not words[-1].endswith("/") else item)
                src = ROOT / item
                for file in ([src] if src.is_file() else sorted(src.rglob("*"))):
                    rel = file.relative_to(ROOT).as_posix()
                    if file.is_file() and in_build_context(rel, patterns):
                        target = dest if src.is_file() else dest / file.relative_to(src)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, target)
    return context


def pip_target(project: Path, site: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                             "--no-compile", "--disable-pip-version-check", "--target",
                             str(site), str(project)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def installed_like_the_image(tmp_path: Path) -> Path:
    """The product installed the way the production image's build stage does it: its COPY
    sources, what its RUN installs into the prefix the image copies (/install), installed with
    pip into a directory of its own (--target: the venv's editable install is left alone).
    Returns that site directory."""
    image = final_stage(dockerfile_instructions())
    _, install = build_stage_of(image)
    context = build_context(tmp_path)
    (product,) = [what for what, prefix in pip_installs(install).items() if prefix == "/install"]
    return pip_target(context / product, tmp_path / "site")


def run_installed(site: Path, *args: str, env: dict[str, str] | None = None,
                  cwd: Path | None = None, extra: Path | None = None
                  ) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` seeing the package in ``site`` (and ``extra``) only: -S skips the venv's
    .pth files (its editable installs of the source tree); its site-packages provide the
    dependencies."""
    import sysconfig

    path = os.pathsep.join([str(site), *([str(extra)] if extra else []),
                            sysconfig.get_paths()["purelib"]])
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd or site, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def test_production_image_leaves_the_emulator_out(tmp_path: Path) -> None:
    site = installed_like_the_image(tmp_path)
    assert (site / "proxy_addon" / "cli" / "main.py").is_file()
    assert not (site / EMULATOR).exists(), "the product's install brings the emulator"
    record = next(site.glob("tokenproxy-*.dist-info")) / "RECORD"
    assert EMULATOR not in record.read_text() and "emulator/" not in record.read_text()

    # the product imports and runs without it: every module, and `tokenproxy --help`
    probe = ("import importlib, importlib.util, pkgutil, proxy_addon, sys\n"
             f"assert proxy_addon.__file__.startswith({str(site)!r}), proxy_addon.__file__\n"
             "assert importlib.util.find_spec('rc_emulator') is None\n"
             "for m in pkgutil.walk_packages(proxy_addon.__path__, 'proxy_addon.'):\n"
             "    if not m.name.endswith('__main__'):\n"
             "        importlib.import_module(m.name)\n"
             "assert not [n for n in sys.modules if n.startswith('rc_emulator')]\n")
    imported = run_installed(site, "-c", probe)
    assert imported.returncode == 0, imported.stderr
    assert run_installed(site, "-m", "proxy_addon", "--help").returncode == 0

    # a config asking for the emulator fails at once, saying why; so does `tokenproxy emulator`
    config = tmp_path / "demo.toml"
    config.write_text(render_config({"listen": "127.0.0.1:0", "metrics_listen": "",
                                     "upstream": "http://127.0.0.1:9"},
                                    [{"name": "main", "client_id": DEMO_CLIENT_ID,
                                      "client_secret": DEMO_CLIENT_SECRET, "grant": "jwt",
                                      "jwt": DEMO_JWT}], [], {"backend": "memory"})
                      + '\n[emulator]\nenabled = true\nlisten = "127.0.0.1:0"\n')
    demo = run_installed(site, "-m", "proxy_addon", "run", "--config", str(config),
                         env={"TOKENPROXY_STORE_KEY": Fernet.generate_key().decode()})
    assert demo.returncode == 1, demo.stdout + demo.stderr
    assert NOT_INSTALLED in demo.stderr and "demo" in demo.stderr, demo.stderr
    assert "Traceback" not in demo.stderr and "listening on" not in demo.stdout
    emulator = run_installed(site, "-m", "proxy_addon", "emulator", "--help")
    assert emulator.returncode == 2 and NOT_INSTALLED in emulator.stderr, emulator.stderr
    assert "Traceback" not in emulator.stderr


def test_demo_image_adds_the_emulator_distribution(tmp_path: Path) -> None:
    instructions = dockerfile_instructions()
    names = [name for name, _ in stages(instructions)]
    assert "demo" in names and names[-1] != "demo", "the default image must be the product"
    production, demo = final_stage(instructions), stage(instructions, "demo")
    named = dict(stages(instructions))
    assert named["demo"][0][1].split()[0] == stages(instructions)[-1][1][0][1].split()[0], (
        "demo and the default image are built FROM the same runtime stage")
    assert [i for i in demo if i not in production] == named["demo"][1:], (
        "demo is the default image plus the emulator, nothing else")
    source, install = build_stage_of(production)
    assert build_stage_of(demo)[0] == source
    installs = pip_installs(install)
    assert installs.get(".") == "/install", installs
    emulator_prefix = installs.get("./emulator")
    assert emulator_prefix and emulator_prefix != "/install", (
        "the emulator installs into a prefix of its own")
    (added,) = [split_flags(a)[1] for op, a in demo
                if op == "COPY" and split_flags(a)[0].get("from") == source
                and split_flags(a)[1][0].rstrip("/") == emulator_prefix]
    assert added[-1].rstrip("/") == "/usr/local", "the emulator lands beside the package"
    assert not [a for op, a in production if op in ("COPY", "ADD")
                and emulator_prefix in split_flags(a)[1]]

    # the same layout here: the installed product plus the emulator's distribution runs it
    site = installed_like_the_image(tmp_path)
    emulator_site = pip_target(build_context(tmp_path / "again") / "emulator",
                               tmp_path / "emulator-site")
    assert (emulator_site / EMULATOR / "server.py").is_file()
    assert not (emulator_site / "proxy_addon").exists()
    emulator = run_installed(site, "-m", "proxy_addon", "emulator", "--help",
                             extra=emulator_site)
    assert emulator.returncode == 0, emulator.stderr
    assert "--listen" in emulator.stdout


# ============================================================================================
# compose


def test_compose_references_files_that_exist() -> None:
    for name, service in compose_services().items():
        build = service.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert context == ROOT, f"{name}: build context is not the repo root"
            assert (context / build.get("dockerfile", "Dockerfile")) == DOCKERFILE
        for source, target, read_only in bind_mounts(service):
            assert source.exists(), f"{name}: mount source {source} does not exist"
            assert read_only, f"{name}: bind mount {target} should be read-only"
            assert ROOT in source.parents, f"{name}: mounts {source} from outside the repo"
        image = service.get("image", "")
        assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", image), f"{name}: image {image!r}"
        assert not image.endswith(":latest"), f"{name}: pin the image version"
    for volume in compose().get("volumes", {}):
        assert any(v.split(":")[0] == volume for s in compose_services().values()
                   for v in s.get("volumes", [])), f"unused named volume {volume}"


def test_compose_runs_two_replicas_wired_like_the_container_config() -> None:
    proxies = proxy_services()
    assert len(proxies) >= 2, "the compose stack must run at least two proxy replicas"
    config = loaded_config()
    assert config.proxy.metrics_listen is not None
    required, optional = config_env_vars()
    services = compose_services()
    for name, service in proxies.items():
        # the product image (the Dockerfile's default target, no emulator); the emulator
        # service builds the `demo` target
        build = service.get("build")
        assert build and "target" not in build and service["image"] != services[
            "emulator"]["image"], name
        assert services["emulator"]["build"]["target"] == "demo"
        command = service["command"]
        config_path = command[command.index("--config") + 1]
        assert host_path(service, config_path) == CONTAINER_CONFIG, (
            f"{name}: {config_path} is not deploy/config/tokenproxy.toml")
        container_ports = {c for _, _, c in published_ports(service)}
        assert container_ports == {config.proxy.listen.port, config.proxy.metrics_listen.port}
        env = service["environment"]
        assert required <= set(env), f"{name}: missing {required - set(env)}"
        assert set(env) <= required | optional, f"{name}: unknown variables"
        for var, value in env.items():
            if SECRET_NAME.search(var):
                refs = ENV_REF.findall(str(value))
                assert refs and all(op == ":?" for _, op, _ in refs), (
                    f"{name}: {var} must be a required ${{VAR:?}} from .env, not a value")
        upstream = urlsplit(env["RC_SERVER_URL"])
        emulator_listen = services["emulator"]["command"][
            services["emulator"]["command"].index("--listen") + 1]
        assert upstream.hostname == "emulator"
        assert upstream.port == int(emulator_listen.rsplit(":", 1)[1])
        assert any(t.startswith("/tmp") for t in service.get("tmpfs", [])) or not service.get(
            "read_only")
        assert set(service["depends_on"]) >= {"redis", "emulator"}
    host_ports = [(ip, port) for s in services.values() for ip, port, _ in published_ports(s)]
    assert all(ip == "127.0.0.1" for ip, _ in host_ports), "publish on loopback only"
    assert len({p for _, p in host_ports}) == len(host_ports), "a host port is used twice"
    redis_url = next(iter(proxies.values()))["environment"]["TOKENPROXY_REDIS_URL"]
    assert urlsplit(ENV_REF.sub("x", redis_url)).hostname in services


def test_compose_variables_come_from_a_git_ignored_env_file() -> None:
    text = COMPOSE_FILE.read_text()
    refs = ENV_REF.findall(text)
    assert refs
    example = env_example()
    for name, op, _ in refs:
        if op not in (":-", "-"):
            assert name in example, f"{name} is not in .env.example"
            assert op == ":?", f"${{{name}}} should fail loudly when unset (:?)"
    demo = demo_values()
    for name, value in example.items():
        assert value == "" or value in demo, (
            f".env.example {name} must be empty (REQUIRED) or a published demo value")
    assert any(v == "" for v in example.values()), "nothing is marked REQUIRED"
    assert "REQUIRED" in ENV_EXAMPLE.read_text()
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/compose/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/compose/.env is not git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "deploy/compose/.env"],
                             cwd=ROOT, capture_output=True)
    assert tracked.returncode != 0, "deploy/compose/.env is committed"


def test_prometheus_scrapes_every_replica_and_loads_the_alert_rules() -> None:
    services = compose_services()
    prometheus = services["prometheus"]
    flags = dict(a.lstrip("-").split("=", 1) for a in prometheus["command"] if "=" in a)
    config_file = host_path(prometheus, flags.get("config.file",
                                                  "/etc/prometheus/prometheus.yml"))
    assert config_file == COMPOSE_DIR / "prometheus.yml"
    doc = yaml_doc(config_file)
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "tokenproxy"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    metrics_port = loaded_config().proxy.metrics_listen.port
    assert targets == {f"{name}:{metrics_port}" for name in proxy_services()}
    # /metrics needs the admin token: Prometheus reads it from a file its entrypoint writes,
    # on a private tmpfs, from the variable the proxies' config names
    token_env = loaded_config().proxy.admin_token_env
    assert token_env
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
    token_file = PurePosixPath(auth["credentials_file"])
    assert any(token_file.is_relative_to(t.split(":")[0]) and "mode=0700" in t
               for t in prometheus.get("tmpfs", [])), f"{token_file} not on a private tmpfs"
    script = prometheus["entrypoint"][2]
    assert f'"$${token_env}" > {token_file}' in script and "umask 077" in script
    assert 'exec /bin/prometheus "$$@"' in script
    assert ENV_REF.fullmatch(prometheus["environment"][token_env])
    for name, service in proxy_services().items():
        assert service["environment"][token_env] == prometheus["environment"][token_env], name
    rules = [host_path(prometheus, r) for r in doc["rule_files"]]
    assert DASHBOARDS / "alerts.yml" in rules
    alerts = yaml_doc(DASHBOARDS / "alerts.yml")
    assert any(r.get("alert") for g in alerts["groups"] for r in g["rules"])
    assert {c for _, _, c in published_ports(prometheus)} == {9090}


def test_promtool_accepts_the_prometheus_config_and_its_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make debs`)")
    prometheus = compose_services()["prometheus"]
    doc = yaml_doc(COMPOSE_DIR / "prometheus.yml")
    doc["rule_files"] = [str(host_path(prometheus, r)) for r in doc["rule_files"]]
    token_file = tmp_path / "admin-token"  # the token file exists only inside the container
    token_file.write_text("x" * 32)
    for job in doc["scrape_configs"]:
        if "credentials_file" in job.get("authorization", {}):
            job["authorization"]["credentials_file"] = str(token_file)
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(doc))
    result = subprocess.run([promtool, "check", "config", str(local)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout + result.stderr)
    assert found and int(found.group(1)) > 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_prometheus_and_every_dashboard() -> None:
    services = compose_services()
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == COMPOSE_DIR / "grafana" / "provisioning"
    (datasources,) = [yaml_doc(p) for p in (provisioning / "datasources").glob("*.y*ml")]
    (source,) = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    assert url.port in {c for _, _, c in published_ports(services["prometheus"])}
    assert source.get("isDefault") is True
    scrape = yaml_doc(COMPOSE_DIR / "prometheus.yml")["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape

    (providers,) = [yaml_doc(p) for p in (provisioning / "dashboards").glob("*.y*ml")]
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert host_path(grafana, provider["options"]["path"]) == DASHBOARDS
    dashboards = {p.name: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}
    assert {"tokenproxy-overview.json", "tokenproxy-account.json"} <= set(dashboards)
    uids = {d["uid"] for d in dashboards.values()}
    assert len(uids) == len(dashboards), "dashboard uids must be unique"
    text = "".join(p.read_text() for p in DASHBOARDS.glob("*.json"))
    for linked in set(re.findall(r"/d/([A-Za-z0-9_-]+)", text)):
        assert linked in uids, f"a dashboard links to /d/{linked}, which is not provisioned"
    for name, dashboard in dashboards.items():
        variables = dashboard["templating"]["list"]
        sources = [v for v in variables if v["type"] == "datasource"]
        assert sources and all(v["query"] == source["type"] for v in sources), name


def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version", "--short"], capture_output=True,
                                 text=True, timeout=30).stdout.strip()
        major = version.lstrip("v").split(".")[0]
        if major.isdigit() and int(major) >= 2:
            return [standalone]
    pytest.skip("the docker compose plugin (v2) is not installed: `docker compose` is an "
                "unknown command here, so compose.yaml is checked by the tests above only")


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    cli = compose_cli()
    env_file = tmp_path / "env"
    values = {**env_example(), "LEGACY_APP_KEY": FAKE_ENV["LEGACY_APP_KEY"],
              "TOKENPROXY_STORE_KEY": FAKE_ENV["TOKENPROXY_STORE_KEY"],
              "REDIS_PASSWORD": "fakepassword", "GRAFANA_ADMIN_PASSWORD": "fakepassword"}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    base = [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    ok = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()
                                if k != "LEGACY_APP_KEY"))
    missing = subprocess.run([*base, "config", "-q"], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode != 0 and "LEGACY_APP_KEY" in missing.stderr


# ============================================================================================
# Kubernetes


def test_kustomization_applies_existing_manifests_but_never_the_secret_template() -> None:
    kustomization = yaml_doc(K8S / "kustomization.yaml")
    assert "namespace" not in kustomization, "namespace-less: chosen at apply time"
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S / name).is_file(), f"{name} is listed but missing"
    assert "secret.example.yaml" not in resources
    kinds = {doc["kind"] for doc in k8s_resources().values()}
    assert kinds == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                     "NetworkPolicy", "ServiceMonitor"}
    for doc in k8s_resources().values():
        assert "namespace" not in doc["metadata"], f"{doc['kind']} pins a namespace"
    unlisted = {p.name for p in K8S.glob("*.yaml")} - set(resources) - {"kustomization.yaml"}
    assert unlisted == {"secret.example.yaml"}
    (image,) = kustomization["images"]
    assert image["name"] == proxy_container()["image"]


def test_configmap_holds_the_container_config() -> None:
    configmap = k8s_resources()["ConfigMap"]
    assert configmap["data"]["tokenproxy.toml"] == CONTAINER_CONFIG.read_text()
    parse_config(tomllib.loads(configmap["data"]["tokenproxy.toml"]), "configmap", FAKE_ENV)


def test_deployment_runs_replicas_with_probes_on_the_metrics_port() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] >= 2
    config = loaded_config()
    assert config.proxy.metrics_listen is not None
    container = proxy_container()
    assert named_port(container, "http") == config.proxy.listen.port
    assert named_port(container, "metrics") == config.proxy.metrics_listen.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            port = named_port(container, container[probe]["httpGet"]["port"])
            assert port == config.proxy.metrics_listen.port, f"{probe} not on the metrics port"
    annotations = spec["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == config.proxy.metrics_listen.port

    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"]
    assert quantity_bytes(resources["requests"]["memory"]) <= quantity_bytes(
        resources["limits"]["memory"])
    # a replayable request body must fit in memory with room to spare
    assert quantity_bytes(resources["limits"]["memory"]) > 4 * config.proxy.replay_body_limit

    # the config file: args name a path the ConfigMap volume provides
    args = container["args"]
    image_cmd = next(a for op, a in final_stage(dockerfile_instructions()) if op == "CMD")
    assert args == exec_form(image_cmd), "args differ from the image's CMD"
    config_path = PurePosixPath(args[args.index("--config") + 1])
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"]
                if config_path.is_relative_to(m["mountPath"])]
    assert mount.get("readOnly") is True
    configmap = volumes[mount["name"]]["configMap"]
    assert configmap["name"] == k8s_resources()["ConfigMap"]["metadata"]["name"]
    item = next(i for i in configmap["items"] if i["path"] == str(
        config_path.relative_to(mount["mountPath"])))
    assert item["key"] in k8s_resources()["ConfigMap"]["data"]


def test_deployment_security_context() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    container = proxy_container()
    uid, home = dockerfile_user_home()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid != 0
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert pod.get("automountServiceAccountToken") is False
    # the read-only root needs writable scratch space where the process writes (checked for
    # real in test_real_proxy_with_the_container_config_answers_every_probe)
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in container["volumeMounts"]
                if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]}
    assert "/tmp" in writable and f"{home}/.mitmproxy" in writable


def test_deployment_takes_credentials_from_the_secret_only() -> None:
    required, optional = config_env_vars()
    env = {e["name"]: e for e in proxy_container()["env"]}
    assert required <= set(env), f"the Deployment does not set {required - set(env)}"
    assert set(env) <= required | optional
    secret = yaml_doc(K8S / "secret.example.yaml")
    for name, entry in env.items():
        if SECRET_NAME.search(name) or name.startswith("RC_CLIENT"):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            assert ref and "value" not in entry, f"{name} must come from a Secret"
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], f"{ref['key']} not in the template"
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values()
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(secret["stringData"]) == refs, "the Secret template and the Deployment differ"


def test_secret_template_holds_placeholders_only() -> None:
    secret = yaml_doc(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret" and "data" not in secret
    for key, value in secret["stringData"].items():
        assert value.startswith("REPLACE_ME"), f"{key}: not a placeholder"


def test_services_pdb_and_servicemonitor_select_the_pods() -> None:
    spec = deployment()["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    container = proxy_container()
    services = services_by_name()
    app_service = services["tokenproxy"]
    assert [p["targetPort"] for p in app_service["spec"]["ports"]] == ["http"], (
        "apps' Service exposes the proxy port only")
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            named_port(container, port["targetPort"])  # raises StopIteration if unknown

    pdb = k8s_resources()["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]

    monitor = k8s_resources()["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [s for s in services.values()
                if monitor["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["tokenproxy-metrics"]
    (metrics_service,) = selected
    assert metrics_service["spec"].get("clusterIP") == "None", "one target per pod: headless"
    port_names = {p["name"]: p for p in metrics_service["spec"]["ports"]}
    metrics_port = loaded_config().proxy.metrics_listen.port
    token_env = loaded_config().proxy.admin_token_env
    token_ref = next(e["valueFrom"]["secretKeyRef"] for e in container["env"]
                     if e["name"] == token_env)
    for endpoint in monitor["spec"]["endpoints"]:
        port = port_names[endpoint["port"]]
        assert named_port(container, port["targetPort"]) == metrics_port
        assert endpoint.get("path", "/metrics") == "/metrics"
        # the scrape sends the token the pods require: the same Secret key
        assert endpoint["authorization"].get("type", "Bearer") == "Bearer"
        assert endpoint["authorization"]["credentials"] == token_ref


def test_network_policy_admits_apps_to_the_proxy_and_only_prometheus_to_metrics() -> None:
    policy = k8s_resources()["NetworkPolicy"]
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the policy must select the proxy pods"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    config = loaded_config()
    ports = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(ports) == {"http", "metrics"}
    assert named_port(container, "http") == config.proxy.listen.port
    assert config.proxy.metrics_listen is not None
    assert named_port(container, "metrics") == config.proxy.metrics_listen.port
    (prometheus,) = ports["metrics"]
    assert prometheus["podSelector"]["matchLabels"], "metrics: only Prometheus' pods"
    assert config.proxy.admin_token_env, "metrics beyond loopback need the bearer token too"


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not "
                             "installed (dev extra): no offline Kubernetes schemas")
    files = [K8S / n for n in yaml_doc(K8S / "kustomization.yaml")["resources"]]
    files.append(K8S / "secret.example.yaml")
    validated = set()
    for version in ("1.29", kv.latest_version()):
        for path in files:
            for doc in yaml_docs(path):
                try:
                    kv.validate(doc, version, strict=True)
                except kv.SchemaNotFoundError:
                    assert doc["kind"] == "ServiceMonitor", f"no schema for {doc['kind']}"
                    continue
                except kv.ValidationError as exc:
                    pytest.fail(f"{path.name} ({version}): {'.'.join(map(str, exc.path))}: "
                                f"{exc.message}")
                validated.add(doc["kind"])
    assert validated == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                         "NetworkPolicy", "Secret"}
    # the validator is not a rubber stamp: a misspelt field fails
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesytem"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def test_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot render deploy/k8s")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["kind"] for d in docs) == sorted(
        ["ConfigMap", "Deployment", "Service", "Service", "PodDisruptionBudget",
         "NetworkPolicy", "ServiceMonitor"])
    (rendered,) = [d for d in docs if d["kind"] == "Deployment"]
    image = yaml_doc(K8S / "kustomization.yaml")["images"][0]
    assert rendered["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"{image['newName']}:{image['newTag']}")
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tokenproxy"
               for d in docs)


# ============================================================================================
# secrets


def test_secret_scanner_finds_planted_secrets() -> None:
    planted = {
        "Fernet key": f"TOKENPROXY_STORE_KEY={Fernet.generate_key().decode()}",
        "long hex": f"LEGACY_APP_KEY={secrets.token_hex(24)}",
        "password in URL": "url: redis://:s3cr3t-value@redis:6379/0",
        "JWT": "RC_JWT=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc",
    }
    for label, text in planted.items():
        assert any(f.startswith(label) for f in secret_findings(text)), label
    for clean in ("url: redis://:${REDIS_PASSWORD:?set it}@redis:6379/0",
                  "TOKENPROXY_REDIS_URL: REPLACE_ME-rediss://:password@redis-host:6380/0",
                  'key = "${LEGACY_APP_KEY}"'):
        assert secret_findings(clean) == [], clean


def test_no_secret_values_in_any_deployment_file() -> None:
    files = deploy_files()
    assert {COMPOSE_FILE, ENV_EXAMPLE, CONTAINER_CONFIG, K8S / "deployment.yaml"} <= set(files)
    for path in files:
        findings = secret_findings(path.read_text())
        assert findings == [], f"{path.relative_to(ROOT)}: {findings}"
    # no literal after a password option anywhere in compose
    for name, service in compose_services().items():
        command = service.get("command", [])
        for i, arg in enumerate(command[:-1]):
            if arg.startswith("-") and re.search(r"pass|secret|token", arg, re.I):
                assert ENV_REF.fullmatch(command[i + 1]), f"{name}: literal after {arg}"
        for var, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(var):
                assert ENV_REF.search(str(value)), f"{name}: {var} is inlined"


# ============================================================================================
# a real proxy with the container config


@pytest.fixture
def container_like_proxy(tmp_path: Path, redis_factory: Callable[..., RedisServer],
                         emulator_factory: Callable[..., Emulator]) -> Iterator[
                             tuple[Proxy, Path, dict[str, str]]]:
    """The container config, its listen addresses moved to loopback port 0, run as a real
    process against the real emulator and a password-protected redis-server, with a HOME of
    its own (to see what it writes)."""
    redis = redis_factory(password=secrets.token_hex(12))
    emulator = emulator_factory()
    doc = container_config_doc()
    assert set(doc) <= {"proxy", "accounts", "clients", "store"}
    doc["proxy"].update(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0")
    assert doc["proxy"]["admin_token_env"] == "TOKENPROXY_ADMIN_TOKEN"  # kept: it is tested
    config_path = tmp_path / "tokenproxy.toml"
    config_path.write_text(render_config(doc["proxy"], doc["accounts"], doc["clients"],
                                         doc["store"]))
    home = tmp_path / "home"
    home.mkdir()
    env = {"RC_SERVER_URL": emulator.url, "RC_CLIENT_ID": DEMO_CLIENT_ID,
           "RC_CLIENT_SECRET": DEMO_CLIENT_SECRET, "RC_JWT": DEMO_JWT,
           "LEGACY_APP_KEY": secrets.token_hex(16),
           "TOKENPROXY_STORE_KEY": Fernet.generate_key().decode(),
           "TOKENPROXY_REDIS_URL": redis.url,
           "TOKENPROXY_REDIS_PREFIX": f"deploy-{secrets.token_hex(4)}", "HOME": str(home),
           "TOKENPROXY_ADMIN_TOKEN": secrets.token_hex(24)}
    proxy = start_proxy_with_config(config_path, env=env)
    try:
        yield proxy, home, env
    finally:
        proxy.stop()


def test_real_proxy_with_the_container_config_answers_every_probe(
        container_like_proxy: tuple[Proxy, Path, dict[str, str]]) -> None:
    proxy, home, env = container_like_proxy
    assert proxy.admin_url
    with proxy.http(key=env["LEGACY_APP_KEY"]) as client:
        answer = client.get("/restapi/v1.0/account/~/extension/~")
    assert answer.status_code == 200, answer.text

    # probes ask without credentials; scrapers (and `tokenproxy status`) send the admin token
    paths = probe_paths()
    assert set(paths.values()) >= {"/readyz", "/healthz", "/metrics"}
    bearer = {"Authorization": f"Bearer {env['TOKENPROXY_ADMIN_TOKEN']}"}
    with httpx.Client(base_url=proxy.admin_url, timeout=10, trust_env=False) as admin:
        for who, path in paths.items():
            response = admin.get(path, headers=bearer if who in SCRAPERS else {})
            assert response.status_code == 200, f"{who} polls {path}: {response.status_code}"
            if who in SCRAPERS:
                assert admin.get(path).status_code == 401, f"{path} answers without the token"
        assert admin.get("/status").status_code == 401
        status = admin.get("/status", headers=bearer).json()
        assert [a["state"] for a in status["accounts"]] == ["healthy"]
        assert admin.get("/readyz").json()["ready"] is True
        assert admin.get("/readyz").json()["store"]["backend"] == "redis"
        assert 'tokenproxy_store_up{backend="redis"}' in admin.get("/metrics",
                                                                   headers=bearer).text
        assert admin.get("/no-such-probe").status_code == 404  # 200 above means something
    assert env["TOKENPROXY_ADMIN_TOKEN"] not in proxy.logs()

    # the image's HEALTHCHECK, run as written (its port moved to this proxy's)
    port = urlsplit(proxy.admin_url).port
    assert port is not None
    command = healthcheck_command()
    assert run_healthcheck(command, healthcheck_url(command), port) == 0

    # memory: the idle process fits its request
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proxy.proc.pid}/status")
                            .read_text()).group(1))
    request = quantity_bytes(proxy_container()["resources"]["requests"]["memory"])
    assert rss_kib * 1024 < request, f"idle RSS {rss_kib} KiB above the memory request"

    # what the process wrote under HOME lands on writable mounts (read-only root filesystem)
    _, image_home = dockerfile_user_home()
    written = {f"{image_home}/{p.name}" for p in home.iterdir()}
    k8s_writable = {m["mountPath"] for m in proxy_container()["volumeMounts"]
                    if not m.get("readOnly")}
    for service in proxy_services().values():
        compose_writable = {t.split(":")[0] for t in service.get("tmpfs", [])}
        for path in written:
            assert not service.get("read_only") or path in compose_writable, (
                f"compose: {path} is written but not writable")
    for path in written:
        assert path in k8s_writable, f"k8s: {path} is written but not on a writable volume"

    proxy.stop()
    assert run_healthcheck(command, healthcheck_url(command), port) != 0


def test_compose_emulator_command_and_healthcheck_work(
        emulator_factory: Callable[..., Emulator]) -> None:
    service = compose_services()["emulator"]
    command = service["command"]
    assert command[0] == "emulator"
    args = command[1:]
    listen = args.index("--listen")
    emulator = emulator_factory(*(args[:listen] + args[listen + 2:]))  # loopback port 0
    check = service["healthcheck"]["test"]
    assert check[0] == "CMD"
    url = healthcheck_url(check[1:])
    assert urlsplit(url).port == int(args[listen + 1].rsplit(":", 1)[1])
    port = urlsplit(emulator.url).port
    assert port is not None
    assert run_healthcheck(check[1:], url, port) == 0
    emulator.stop()
    assert run_healthcheck(check[1:], url, port) != 0
