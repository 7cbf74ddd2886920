"""The operator documentation in docs/ stays true to the code.

(a) docs/configuration.md documents exactly the keys the config parser accepts: the accepted
    keys are recorded from the real parser (every allowed-key set it passes to
    ``_Reader.table``) and cross-checked against the config dataclasses;
(b) docs/troubleshooting.md has a row for every error code of the platform rules
    (a copy of /work/shared/platform.md's list, so CI needs no ../shared) and for every
    OAU-/CMN-/AGW-/TPX- code the package (proxy, emulator) contains;
(c) docs/runbooks.md has a section per alert of dashboards/alerts.yml with its three parts;
(d) relative links (and their #anchors) in docs/*.md point at files and headings that exist.

Each check is a function returning a list of problems; the ``*_reports_*`` tests feed it a
deliberately broken input to show that it fails when it should.
"""

from __future__ import annotations

import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy_addon.config import load as config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "proxy_addon"
ALERTS = ROOT / "dashboards" / "alerts.yml"
SHARED_PLATFORM_MD = ROOT.parent / "shared" / "platform.md"

# --------------------------------------------------------------------------------------------
# helpers


def strip_fences(text: str) -> str:
    """Markdown without fenced code blocks, also those indented in list items (inline code
    kept: table keys are in backticks)."""
    return re.sub(r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[ \t]*$", "", text, flags=re.M | re.S)


def read(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# (a) configuration keys

# The smallest valid config that makes the parser walk every table it knows.
WALK_EVERY_TABLE: dict[str, Any] = {
    "proxy": {},
    "accounts": [{"name": "a", "client_id": "cid", "grant": "jwt", "jwt": "j"}],
    "clients": [{"name": "app", "account": "a", "key": "k" * 16}],
    "emulator": {},
    "store": {"backend": "memory"},
}


def accepted_keys(reader_class: type[config._Reader] = config._Reader) -> dict[str, set[str]]:
    """{table: keys} as the parser accepts them, recorded from the allowed-key sets its
    section readers pass to ``_Reader.table`` while parsing a config with every table."""
    seen: dict[str, set[str]] = {}

    class Recording(reader_class):  # type: ignore[misc, valid-type]
        def table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
            seen.setdefault(key, set()).update(allowed)
            return super().table(value, key, allowed)

    Recording("docs-test", {}).config(WALK_EVERY_TABLE)
    top = seen.pop("")
    tables = {re.sub(r"\[\d+\]$", "", key): keys for key, keys in seen.items()}
    assert set(tables) == top, (
        f"the parser accepts the tables {sorted(top)} but walked {sorted(tables)}: extend "
        "WALK_EVERY_TABLE so that every table is parsed")
    return tables


def dataclass_keys() -> dict[str, set[str]]:
    """{table: keys} derived from the config dataclasses (Config's fields and their types)."""
    hints = typing.get_type_hints(config.Config)
    tables: dict[str, set[str]] = {}
    for item in fields(config.Config):
        if item.name == "source":  # the file name, not a key
            continue
        kind = hints[item.name]
        if typing.get_origin(kind) is tuple:  # [[accounts]], [[clients]]
            kind = typing.get_args(kind)[0]
        tables[item.name] = {f.name for f in fields(kind)}
    return tables


_TABLE_HEADING = re.compile(r"^##\s+\[{1,2}([a-z_]+)\]{1,2}\s*$")
_KEY_ROW = re.compile(r"^\|\s*`([a-z_][a-z0-9_]*)`\s*\|")


def documented_keys(text: str) -> dict[str, set[str]]:
    """{table: keys} of a configuration page: a ``## [table]`` / ``## [[table]]`` heading
    starts a table's section; its rows whose first cell is a `key` document that key."""
    tables: dict[str, set[str]] = {}
    current: str | None = None
    for line in strip_fences(text).splitlines():
        if re.match(r"^#{1,2}\s", line):
            match = _TABLE_HEADING.match(line)
            current = match.group(1) if match else None
            if current is not None:
                tables.setdefault(current, set())
            continue
        row = _KEY_ROW.match(line)
        if current is not None and row:
            tables[current].add(row.group(1))
    return tables


def key_problems(accepted: dict[str, set[str]], documented: dict[str, set[str]]) -> list[str]:
    problems = []
    for table in sorted(accepted.keys() | documented.keys()):
        if table not in accepted:
            problems.append(f"[{table}] is documented but the parser has no such table")
            continue
        if table not in documented:
            problems.append(f"[{table}] has no '## [{table}]' section with a key table")
            continue
        for key in sorted(accepted[table] - documented[table]):
            problems.append(f"{table}.{key}: accepted by the parser, not documented")
        for key in sorted(documented[table] - accepted[table]):
            problems.append(f"{table}.{key}: documented, but the parser does not accept it")
    return problems


def test_every_config_key_is_documented() -> None:
    problems = key_problems(accepted_keys(), documented_keys(read(DOCS / "configuration.md")))
    assert not problems, "docs/configuration.md is out of date:\n" + "\n".join(problems)


def test_parser_and_config_dataclasses_agree() -> None:
    """A second source for (a): every dataclass field is a key and every key a field, so a
    key added to either side without the other (and without docs) is caught."""
    parsed, declared = accepted_keys(), dataclass_keys()
    assert parsed == declared, key_problems(parsed, declared)


def test_key_check_reports_new_and_stale_keys() -> None:
    text = read(DOCS / "configuration.md")
    documented = documented_keys(text)
    assert {"listen", "upstream", "tls_cert"} <= documented["proxy"]  # the parser reads rows
    assert set(documented) == {"proxy", "accounts", "clients", "store", "emulator",
                               "rate_limits", "events", "tracing"}

    class NewKey(config._Reader):  # a parser that learnt a key nobody documented
        def emulator(self, value: Any) -> config.EmulatorConfig:
            self.table(value, "emulator", {"enabled", "listen", "args", "fake_new_key"})
            return super().emulator(value)

    assert "emulator.fake_new_key: accepted by the parser, not documented" in key_problems(
        accepted_keys(NewKey), documented)

    stale = text.replace("## [proxy]\n", "## [proxy]\n\n| `retired_key` | int | 1 | gone |\n")
    assert "proxy.retired_key: documented, but the parser does not accept it" in key_problems(
        accepted_keys(), documented_keys(stale))

    without_store = text.replace("## [store]", "## The store")
    assert "[store] has no '## [store]' section with a key table" in key_problems(
        accepted_keys(), documented_keys(without_store))


# --------------------------------------------------------------------------------------------
# (b) error codes

# Every error code in /work/shared/platform.md (the platform rules), copied so that CI does not
# need ../shared. test_platform_md_codes_are_copied_here keeps it in step where the file exists.
PLATFORM_MD_CODES = frozenset({
    "OAU-128", "OAU-129", "OAU-140", "OAU-149", "OAU-153", "OAU-210", "OAU-211", "OAU-213",
    "OAU-251", "CMN-301", "CMN-302", "CMN-303", "CMN-304", "CMN-310", "AGW-401",
})

CODE = re.compile(r"\b(?:OAU|CMN|AGW)-\d+\b|\bTPX-[A-Z]+(?:-[A-Z]+)*\b")


def codes_in_package() -> set[str]:
    """Every platform or proxy error code the source mentions (the product and the emulator)."""
    codes: set[str] = set()
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "emulator").rglob("*.py")]):
        codes.update(CODE.findall(path.read_text(encoding="utf-8")))
    return codes


def documented_codes(text: str) -> set[str]:
    """Codes with a complete row in a troubleshooting table: the code in the first cell and
    every one of the (at least five) cells filled: who answers, cause, what the proxy does,
    the fix."""
    codes: set[str] = set()
    for line in strip_fences(text).splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and all(cells):
            codes.update(CODE.findall(cells[0]))
    return codes


def code_problems(required: set[str] | frozenset[str], documented: set[str]) -> list[str]:
    return [f"{code}: no complete row in docs/troubleshooting.md"
            for code in sorted(required - documented)]


def test_troubleshooting_covers_every_platform_code() -> None:
    problems = code_problems(PLATFORM_MD_CODES,
                             documented_codes(read(DOCS / "troubleshooting.md")))
    assert not problems, "\n".join(problems)


def test_troubleshooting_covers_every_code_in_the_package() -> None:
    known = codes_in_package()
    # the grep works: it finds proxy codes, platform codes and emulator-only codes
    assert {"TPX-CLIENT-UNKNOWN", "TPX-REAUTH-REQUIRED", "OAU-213", "CMN-405"} <= known
    problems = code_problems(known, documented_codes(read(DOCS / "troubleshooting.md")))
    assert not problems, "\n".join(problems)


def test_every_proxy_error_code_is_documented() -> None:
    from proxy_addon.gateway import errors as proxy_errors

    constants = {value for name, value in vars(proxy_errors).items()
                 if name.isupper() and isinstance(value, str) and value.startswith("TPX-")}
    tpx = constants | {c for c in codes_in_package() if c.startswith("TPX-")}
    assert len(tpx) >= 10, sorted(tpx)
    problems = code_problems(tpx, documented_codes(read(DOCS / "troubleshooting.md")))
    assert not problems, "\n".join(problems)


def test_code_check_reports_missing_and_incomplete_rows() -> None:
    text = read(DOCS / "troubleshooting.md")
    documented = documented_codes(text)
    assert code_problems({"OAU-999", "TPX-NEW-THING"}, documented) == [
        "OAU-999: no complete row in docs/troubleshooting.md",
        "TPX-NEW-THING: no complete row in docs/troubleshooting.md"]
    incomplete = "| code | who | cause | does | fix |\n|---|---|---|---|---|\n" \
                 "| `OAU-999` | platform | cause |  | fix |\n"
    assert "OAU-999" not in documented_codes(incomplete)
    assert "OAU-999" in documented_codes(incomplete.replace("|  |", "| retries |"))


def test_platform_md_codes_are_copied_here() -> None:
    if not SHARED_PLATFORM_MD.is_file():
        pytest.skip("../shared/platform.md is not available (CI): the copy above is used")
    codes = set(CODE.findall(SHARED_PLATFORM_MD.read_text(encoding="utf-8")))
    assert codes <= PLATFORM_MD_CODES, (
        f"platform.md has new codes {sorted(codes - PLATFORM_MD_CODES)}: add them to "
        "PLATFORM_MD_CODES and to docs/troubleshooting.md")


# --------------------------------------------------------------------------------------------
# (c) runbooks

RUNBOOK_PARTS = ("What it means", "What to check", "What to do")


def alert_names(path: Path = ALERTS) -> list[str]:
    document = yaml.safe_load(read(path))
    return [rule["alert"] for group in document["groups"] for rule in group["rules"]
            if "alert" in rule]


def runbook_sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    parts = re.split(r"^##\s+(.+?)\s*$", strip_fences(text), flags=re.M)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        sections[title] = body
    return sections


def runbook_problems(alerts: list[str], text: str) -> list[str]:
    problems = []
    sections = runbook_sections(text)
    for alert in alerts:
        body = sections.get(alert)
        if body is None:
            problems.append(f"{alert}: no '## {alert}' section")
            continue
        found = re.split(r"^###\s+(.+?)\s*$", body, flags=re.M)
        subsections = dict(zip(found[1::2], found[2::2], strict=True))
        for part in RUNBOOK_PARTS:
            if not subsections.get(part, "").strip():
                problems.append(f"{alert}: no '### {part}' with content")
        order = [title for title in found[1::2] if title in RUNBOOK_PARTS]
        if order != list(RUNBOOK_PARTS) and not problems:
            problems.append(f"{alert}: parts out of order: {order}")
    for title in sections:
        if title.startswith("Tokenproxy") and title not in alerts:
            problems.append(f"{title}: a runbook for an alert that alerts.yml does not have")
    return problems


def test_every_alert_has_a_runbook() -> None:
    alerts = alert_names()
    assert len(alerts) >= 9, alerts
    problems = runbook_problems(alerts, read(DOCS / "runbooks.md"))
    assert not problems, "docs/runbooks.md is out of date:\n" + "\n".join(problems)


def test_runbook_check_reports_missing_sections_and_parts() -> None:
    text = read(DOCS / "runbooks.md")
    alerts = alert_names()
    assert runbook_problems([*alerts, "TokenproxyNewAlert"], text) == [
        "TokenproxyNewAlert: no '## TokenproxyNewAlert' section"]
    assert runbook_problems(alerts[1:], text) == [
        f"{alerts[0]}: a runbook for an alert that alerts.yml does not have"]
    no_fix = "## TokenproxyX\n\n### What it means\n\nm\n\n### What to check\n\nc\n"
    assert runbook_problems(["TokenproxyX"], no_fix) == [
        "TokenproxyX: no '### What to do' with content"]


# --------------------------------------------------------------------------------------------
# (d) links

LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: link markup and backticks dropped, lower case,
    punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in strip_fences(path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            slug = github_anchor(match.group(1))
            seen = counts.get(slug, 0)
            counts[slug] = seen + 1
            found.add(slug if seen == 0 else f"{slug}-{seen}")
    return found


def link_problems(directory: Path) -> list[str]:
    problems = []
    for doc in sorted(directory.glob("*.md")):
        text = strip_fences(doc.read_text(encoding="utf-8"))
        text = re.sub(r"`[^`\n]*`", "code", text)  # a code span is text, never a link
        for target in LINK.findall(text):
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, fragment = target.partition("#")
            destination = (doc.parent / path).resolve() if path else doc
            if not destination.exists():
                problems.append(f"{doc.name}: link to {target}: no such file")
            elif fragment and destination.suffix == ".md" \
                    and fragment not in anchors(destination):
                problems.append(f"{doc.name}: link to {target}: no such heading")
    return problems


def test_relative_links_in_docs_resolve() -> None:
    docs = sorted(p.name for p in DOCS.glob("*.md"))
    for name in ("architecture.md", "configuration.md", "migration.md", "runbooks.md",
                 "security.md", "troubleshooting.md"):
        assert name in docs, f"docs/{name} is missing"
    problems = link_problems(DOCS)
    assert not problems, "\n".join(problems)


def test_link_check_reports_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n")
    (tmp_path / "doc.md").write_text(
        "# Doc\n\n[ok](other.md) [ok](other.md#a-code-heading-yes) [ok](#doc)\n"
        "[web](https://example.com/x) [gone](missing.md) [bad](other.md#nope)\n"
        "[self](#nowhere)\n\n```md\n[in a code block](ignored.md)\n```\n"
        "* a list item:\n  ```md\n  [indented code block](ignored.md)\n  ```\n"
        "`[a code span](ignored.md)`\n")
    assert link_problems(tmp_path) == [
        "doc.md: link to missing.md: no such file",
        "doc.md: link to other.md#nope: no such heading",
        "doc.md: link to #nowhere: no such heading",
    ]


def architecture_sections(text: str) -> dict[str, str]:
    """{subpackage: its part of docs/architecture.md's Components}: from its bold heading
    (**`gateway/`**) to the next one."""
    marks = list(re.finditer(r"\*\*`(\w+)/`\*\*", text))
    return {m.group(1): text[m.end():(marks[i + 1].start() if i + 1 < len(marks) else None)]
            for i, m in enumerate(marks)}


def test_architecture_names_every_module_where_it_lives() -> None:
    text = read(DOCS / "architecture.md")
    sections = architecture_sections(text)
    missing = []
    for path in sorted(PACKAGE.glob("*/*.py")):
        if path.name == "__init__.py":
            continue
        sub = path.parent.name
        if f"{sub}/{path.name}" not in text and f"`{path.name}`" not in sections.get(sub, ""):
            missing.append(f"{sub}/{path.name}")
    assert not missing, f"docs/architecture.md does not name: {missing}"
    # and every module path it names exists (no stale names after a move)
    subs = "|".join(sections)
    named = set(re.findall(rf"`((?:{subs})/\w+\.py)`", text))
    assert named, "the check reads no module paths"
    stale = sorted(n for n in named if not (PACKAGE / n).is_file())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
