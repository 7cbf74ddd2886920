"""The audit trail (issue 19, item 5), the last addon: one JSON line per answered request.

``response``/``error``: time, request id (:mod:`.request_id`), client, account, method, the
path as a template (ids folded to ``{}``, no query: a query may hold a token), status (0: no
answer), upstream milliseconds, whether it was replayed after a token 401, how long it waited
for its rate-limit group, bytes in and out — never a header, a token or a body. Written by the
``tokenproxy.access`` logger to ``[proxy] access_log`` (``"stderr"`` or a file; ``"off"``).
"""

from __future__ import annotations

import json
import logging
import sys
import time

from mitmproxy import http

from ..ratelimit.groups import fold
from .flow_context import context_of
from .request_id import request_id_of

MAX_TEMPLATE = 256
_WRITTEN = "tokenproxy.audited"


def access_logger(target: str) -> logging.Logger | None:
    """The ``tokenproxy.access`` logger writing bare lines to ``target``; None for ``off``
    (its previous file, if any, is closed either way)."""
    logger = logging.getLogger("tokenproxy.access")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if target == "off":
        return None
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler: logging.Handler = (logging.StreamHandler(sys.stderr) if target == "stderr"
                                else logging.FileHandler(target, encoding="utf-8"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


class Audit:
    def __init__(self, logger: logging.Logger | None, target: str = "") -> None:
        self._log = logger  # None: ``access_log = "off"``
        self._target = target

    def access_log_changed(self, target: str) -> None:
        """A reload's ``[proxy] access_log``: the next answered request goes there."""
        if target != self._target:
            self._log, self._target = access_logger(target), target

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def _write(self, flow: http.HTTPFlow) -> None:
        if self._log is None or flow.metadata.get(_WRITTEN):
            return
        flow.metadata[_WRITTEN] = True
        request, response = flow.request, flow.response
        context = context_of(flow)
        client = context.client if context is not None else None
        upstream_ms = None
        if response is not None and response.timestamp_start and request.timestamp_end:
            upstream_ms = round(max(0.0, response.timestamp_start - request.timestamp_end) * 1000,
                                1)
        rate_wait = context.rate_waited if context is not None else 0.0
        line = {
            "time": round(time.time(), 3),
            "request_id": request_id_of(flow),
            "client": client.name if client is not None else None,
            "account": client.account if client is not None else None,
            "method": request.method[:16],
            "path": fold(request.path.split("?", 1)[0])[:MAX_TEMPLATE],
            "status": response.status_code if response is not None else 0,
            "upstream_ms": upstream_ms,
            "replayed": bool(context is not None and context.replayed),
            "rate_wait_ms": round(rate_wait * 1000, 1),
            "bytes_in": _size(request),
            "bytes_out": _size(response) if response is not None else 0,
        }
        if flow.error is not None and response is None:
            line["error"] = "the app or the platform hung up before the answer"
        self._log.info(json.dumps(line, separators=(",", ":")))


def _size(message: http.Message) -> int:
    if not message.stream and message.raw_content is not None:
        return len(message.raw_content)
    length = message.headers.get("content-length", "")
    return int(length) if length.isdigit() else 0
