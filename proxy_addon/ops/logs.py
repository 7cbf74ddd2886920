"""Log output: plain text or one JSON object per line, always redacted.

Every line passes through :class:`RedactingFormatter` after formatting, so no code path (an
exception message, a third-party library's log) can print a secret: values the proxy knows
(config credentials, client keys, every token it obtained lately) are replaced by ``***``, and
so is anything shaped like a credential (``Bearer …``, ``access_token=…``, a JSON token field).

Events worth a dashboard or an alert carry structured fields (``extra={"event": …,
"account": …}``): state changes, renewals, re-authentication, replay failures.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable

REDACTED = "***"
STRUCTURED_FIELDS = ("event", "account", "state", "previous_state", "code", "reason",
                     "generation", "grant")
NOISY_LOGGERS = ("mitmproxy", "httpx", "httpcore", "hpack", "asyncio", "aiohttp.access")

_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"(?i)\b(access_token|refresh_token|assertion|password|client_secret|code"
               r"|code_verifier|token)=[^&\s\"']+"),
    re.compile(r"(?i)\"(access_token|refresh_token|assertion|password|client_secret)\"\s*:"
               r"\s*\"[^\"]*\""),
    re.compile(r"(?i)\b(rediss?)://([^:@/\s]*):[^@/\s]+@"),
)


_KEY = 6  # every secret is at least this long; its first _KEY characters index it


class SecretRegistry:
    """Strings that must never be printed: long-lived ones from the config, and the tokens
    obtained lately (bounded).

    Indexed by their first six characters, so redacting a line costs one dictionary lookup
    per character of the line whatever the number of secrets (a scan of every secret took
    4.8 ms a line with 10,000 accounts' credentials, and re-sorting them all 7 ms a token)."""

    def __init__(self, recent: int = 256) -> None:
        self._recent: deque[str] = deque(maxlen=recent)
        self._lock = threading.Lock()
        # prefix -> secrets starting with it, longest first (a secret that contains another
        # is replaced whole); lists are replaced, never changed, so readers need no lock
        self._fixed: dict[str, list[str]] = {}
        self._recent_index: dict[str, list[str]] = {}

    def add(self, values: Iterable[str | None], *, fixed: bool = False) -> None:
        with self._lock:
            for value in values:
                if not value or len(value) < _KEY:
                    continue
                if fixed:
                    listed = self._fixed.get(value[:_KEY], [])
                    if value not in listed:
                        self._fixed[value[:_KEY]] = sorted([*listed, value], key=len,
                                                           reverse=True)
                else:
                    self._recent.append(value)
            if not fixed:
                self._recent_index = _index(self._recent)

    def redact(self, text: str) -> str:
        if self._fixed or self._recent_index:
            text = self._replace_known(text)
        for pattern in _PATTERNS:
            text = pattern.sub(_mask, text)
        return text

    def _replace_known(self, text: str) -> str:
        fixed, recent = self._fixed, self._recent_index
        pieces: list[str] = []
        done = position = 0
        last = len(text) - _KEY
        while position <= last:  # bounded by the text's length
            key = text[position:position + _KEY]
            candidates = fixed.get(key, ()) or recent.get(key, ())
            if key in fixed and key in recent:
                candidates = sorted([*fixed[key], *recent[key]], key=len, reverse=True)
            for secret in candidates:
                if text.startswith(secret, position):
                    pieces += (text[done:position], REDACTED)
                    position = done = position + len(secret)
                    break
            else:
                position += 1
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)


def _index(values: Iterable[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for value in values:
        listed = index.setdefault(value[:_KEY], [])
        if value not in listed:
            listed.append(value)
    for listed in index.values():
        listed.sort(key=len, reverse=True)
    return index


def _mask(match: re.Match[str]) -> str:
    text = match.group(0)
    if text.lower().startswith(("bearer", "basic")):
        return f"{match.group(1)} {REDACTED}"
    if text.startswith('"'):
        return f'"{match.group(1)}": "{REDACTED}"'
    if "://" in text:
        return f"{match.group(1)}://{match.group(2)}:{REDACTED}@"
    return f"{match.group(1)}={REDACTED}"


SECRETS = SecretRegistry()


def remember(*values: str | None) -> None:
    """Tokens just obtained: never print them."""
    SECRETS.add(values)


class RedactingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter, secrets: SecretRegistry = SECRETS) -> None:
        super().__init__()
        self._inner = inner
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return self._secrets.redact(self._inner.format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


FORMAT_PINNED = False  # the command line's --log-format: a reload leaves it alone


def _formatter(fmt: str) -> logging.Formatter:
    inner: logging.Formatter
    if fmt == "json":
        inner = JsonFormatter()
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return RedactingFormatter(inner)


def set_format(fmt: str) -> bool:
    """A reload's ``[proxy] log_format``, from the next line on (unless the command line
    pinned one); True when it applied."""
    if FORMAT_PINNED:
        return False
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_formatter(fmt))
    return True


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger: one handler on stderr, redacted, text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
