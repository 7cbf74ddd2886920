"""A streamed answer the proxy cannot carry on (a compressed body that stops decoding, or a
decompression bomb, while its links are rewritten) ends the app's connection, never its body.

Once a streamed answer's headers are out, an error status is no longer possible; ending the
chunked body cleanly would make a truncated JSON look whole. :func:`install` wraps mitmproxy's
HTTP stream state for streamed response bodies (version-guarded, like :mod:`.early_answer`):
when the ``response.stream`` function raises :class:`~.link_stream.StreamAborted`, the stream is
failed as if the upstream had broken off (mitmproxy's own protocol-error path: the HTTP/1
connection closes before the last chunk, HTTP/2 resets the stream), the ``error`` hook runs,
and the reason is logged. An empty data event mid-body (an HTTP/2 DATA frame with padding
only) is dropped before the stream function sees it: to that function ``b""`` means the end.
"""

from __future__ import annotations

import logging

from .link_stream import StreamAborted

log = logging.getLogger("tokenproxy.stream_abort")


def install() -> bool:
    """Make :class:`StreamAborted` from a stream function cut the app's connection; False if
    this mitmproxy version has no such state to wrap (then the exception ends the connection
    handler, which mitmproxy logs as a crash)."""
    try:
        from mitmproxy.proxy.layers.http import (
            ErrorCode,
            HttpStream,
            ResponseData,
            ResponseProtocolError,
        )
    except ImportError:  # pragma: no cover - depends on the mitmproxy version
        log.warning("mitmproxy's HTTP layer changed: an aborted stream is not handled")
        return False
    original = getattr(HttpStream, "state_stream_response_body", None)
    if original is None or not hasattr(HttpStream, "handle_protocol_error"):  # pragma: no cover
        log.warning("mitmproxy's HTTP layer changed: an aborted stream is not handled")
        return False
    if getattr(original, "tokenproxy_stream_abort", False):
        return True

    def state_stream_response_body(self, event):  # type: ignore[no-untyped-def]
        if isinstance(event, ResponseData) and not event.data:
            return  # nothing to send; a stream function would take it for the end
        try:
            yield from original(self, event)
        except StreamAborted as exc:
            request = self.flow.request
            log.warning("upstream answer to %s %s cut off for the app: %s",
                        request.method, request.path.split("?", 1)[0], exc)
            yield from self.handle_protocol_error(
                ResponseProtocolError(self.stream_id, f"upstream answer cut off: {exc}",
                                      ErrorCode.GENERIC_SERVER_ERROR))

    state_stream_response_body.tokenproxy_stream_abort = True  # type: ignore[attr-defined]
    HttpStream.state_stream_response_body = state_stream_response_body  # type: ignore[method-assign]
    return True
