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


class SecretRegistry:
    """Strings that must never be printed: long-lived ones from the config, and the tokens
    obtained lately (bounded)."""

    def __init__(self, recent: int = 256) -> None:
        self._fixed: set[str] = set()
        self._recent: deque[str] = deque(maxlen=recent)
        self._lock = threading.Lock()
        self._ordered: tuple[str, ...] = ()

    def add(self, values: Iterable[str | None], *, fixed: bool = False) -> None:
        with self._lock:
            for value in values:
                if value and len(value) >= 6:
                    (self._fixed.add(value) if fixed else self._recent.append(value))
            # longest first, so a secret containing another is replaced whole
            self._ordered = tuple(sorted(self._fixed | set(self._recent), key=len,
                                         reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(_mask, text)
        return text


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


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger: one handler on stderr, redacted, text or JSON."""
    inner: logging.Formatter
    if fmt == "json":
        inner = JsonFormatter()
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(inner))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
