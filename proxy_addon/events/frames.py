"""The WebSocket gateway's frames: JSON arrays ``[meta, body?]`` whose ``meta.type`` is
``ConnectionDetails``, ``ClientRequest``, ``ServerNotification``, ``Heartbeat`` or ``Error``
(ringcentral-api-docs ``docs/notifications/websockets/subscribing.md``, ``heart-beats.md``,
``code-samples/websockets/*.json``). :func:`parse` checks what an app or the platform sent and
says exactly what is wrong; the builders write the frames the proxy sends itself.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TYPES = ("ConnectionDetails", "ClientRequest", "ServerNotification", "Heartbeat", "Error")
APP_TYPES = ("ClientRequest", "Heartbeat")  # what an app may send
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_MESSAGE_ID = 128


class FrameError(ValueError):
    """A frame that is not the protocol's; ``message_id`` when the frame named one."""

    def __init__(self, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id


@dataclass(slots=True)
class Frame:
    meta: dict[str, Any]
    body: Any  # None when the frame has no body
    has_body: bool

    @property
    def type(self) -> str:
        return str(self.meta.get("type", ""))

    @property
    def message_id(self) -> str:
        return str(self.meta.get("messageId", ""))

    def text(self) -> str:
        return dump(self.meta, self.body, self.has_body)


def dump(meta: dict[str, Any], body: Any = None, has_body: bool = True) -> str:
    return json.dumps([meta, body] if has_body else [meta], separators=(",", ":"))


def parse(text: str | bytes, *, from_app: bool) -> Frame:
    """One frame, checked. An app's frame must be a ``ClientRequest`` or ``Heartbeat`` with a
    string ``messageId``; a ``ClientRequest`` names a method and an absolute path."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(value, list) or not 1 <= len(value) <= 2:
        raise FrameError("a frame is a JSON array [meta] or [meta, body]")
    meta = value[0]
    if not isinstance(meta, dict):
        raise FrameError("the frame's first element (meta) must be an object")
    message_id = meta.get("messageId")
    named = message_id if isinstance(message_id, str) and len(message_id) <= MAX_MESSAGE_ID \
        else None
    kind = meta.get("type")
    if from_app:
        if kind not in APP_TYPES:
            raise FrameError(f"meta.type must be one of {', '.join(APP_TYPES)}", named)
        if named is None or not named:
            raise FrameError(f"meta.messageId must be a string of 1 to {MAX_MESSAGE_ID} "
                             "characters")
        if kind == "ClientRequest":
            method = meta.get("method")
            path = meta.get("path")
            if not isinstance(method, str) or method.upper() not in METHODS:
                raise FrameError(f"meta.method must be one of {', '.join(METHODS)}", named)
            if not isinstance(path, str) or not path.startswith("/") or len(path) > 4096 \
                    or any(c in path for c in "\r\n\x00 "):
                raise FrameError("meta.path must be an absolute path without spaces or "
                                 "control characters", named)
            for field in ("headers", "query"):
                if field in meta and meta[field] is not None \
                        and not isinstance(meta[field], dict):
                    raise FrameError(f"meta.{field} must be an object", named)
    elif kind not in TYPES:
        raise FrameError(f"unknown frame type {str(kind)[:40]!r}", named)
    return Frame(meta, value[1] if len(value) == 2 else None, len(value) == 2)


def new_id() -> str:
    return str(uuid.uuid4())


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def error_frame(status: int, code: str, message: str, message_id: str | None = None,
                kind: str = "Error") -> str:
    """An ``Error`` frame (or a ``ClientRequest`` answer with an error status) in the
    platform's error shape."""
    meta: dict[str, Any] = {"type": kind, "messageId": message_id or new_id(),
                            "status": status, "headers": {"RCRequestId": new_id()}}
    body = {"errorCode": code, "message": message,
            "errors": [{"errorCode": code, "message": message}]}
    return dump(meta, body)


def answer_frame(message_id: str, status: int, body: Any, headers: dict[str, str] | None = None
                 ) -> str:
    meta = {"type": "ClientRequest", "messageId": message_id, "status": status,
            "headers": {"RCRequestId": new_id(), "Content-Type": "application/json",
                        **(headers or {})}}
    return dump(meta, body)


def heartbeat_frame(message_id: str | None = None) -> str:
    return dump({"type": "Heartbeat", "messageId": message_id or new_id()}, has_body=False)
