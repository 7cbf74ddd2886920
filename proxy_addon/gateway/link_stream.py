"""Streamed answers whose links are rewritten (:mod:`.links`): a compressed body is decoded,
scanned (:class:`~.link_scanner.LinkScanner`) and encoded again the same way on the fly
(gzip, deflate, br, zstd), with bounded decoding; a body that does not decode, or decodes to a
bomb, raises :class:`StreamAborted`, which :mod:`.stream_abort` turns into a cut connection.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli

from .link_scanner import LinkScanner

try:  # Python 3.14 has it built in; mitmproxy depends on the backport before that
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]


class StreamAborted(Exception):
    """A streamed answer cannot go on: the part already sent is all the app gets, and its
    connection is cut (:mod:`.stream_abort`), so it cannot take a truncated body for whole."""


# A streamed compressed answer that decodes to more than this many times its encoded size
# (past the first MiB) is a decompression bomb, not JSON: the proxy stops it (JSON compresses
# some 5-30 times, deflate at most 1032 times)
MAX_EXPANSION = 64
EXPANSION_FLOOR = 1024 * 1024
_TOO_MUCH = f"it decodes to more than {MAX_EXPANSION} times its size"


class Recoded:
    """Decode a streamed body, scan it, encode it again the same way (gzip, deflate, br,
    zstd), flushing after every chunk so the app gets data as it comes. Decoding is bounded
    (:data:`MAX_EXPANSION`); a body that does not decode, or decodes past the bound, raises
    :class:`StreamAborted`."""

    def __init__(self, encoding: str, scan: LinkScanner) -> None:
        self._encoding = encoding
        self._scan = scan
        self._encoded = 0  # bytes received so far
        self._decoded = 0  # bytes they decoded to
        self._decode: Callable[[bytes, int], bytes] | None = None
        self._encode: Callable[[bytes], bytes] = lambda data: data
        self._finish: Callable[[], bytes] = lambda: b""

    def _start(self, first: bytes) -> None:
        if self._encoding in ("gzip", "deflate"):
            if self._encoding == "gzip":
                wbits = 31
            else:  # zlib-wrapped (RFC 9110 section 8.4.1.2) or, from some servers, raw
                zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 \
                    and (first[0] << 8 | first[1]) % 31 == 0
                wbits = 15 if zlib_header else -15
            zdec = [zlib.decompressobj(wbits)]
            zenc = zlib.compressobj(wbits=wbits)

            def zlib_decode(chunk: bytes, most: int) -> bytes:
                out = zdec[0].decompress(chunk, most)
                if zdec[0].unconsumed_tail:
                    raise StreamAborted(_TOO_MUCH)
                while zdec[0].eof and zdec[0].unused_data:  # gzip: another member follows
                    rest = zdec[0].unused_data
                    zdec[0] = zlib.decompressobj(wbits)
                    out += zdec[0].decompress(rest, max(1, most - len(out)))
                    if zdec[0].unconsumed_tail:
                        raise StreamAborted(_TOO_MUCH)
                return out

            self._decode = zlib_decode
            self._encode = lambda data: zenc.compress(data) + zenc.flush(zlib.Z_SYNC_FLUSH)
            self._finish = zenc.flush
        elif self._encoding == "br":
            bdec, benc = brotli.Decompressor(), brotli.Compressor(quality=1)

            def br_decode(chunk: bytes, most: int) -> bytes:
                out = bdec.process(chunk, output_buffer_limit=most)
                if len(out) >= most and not bdec.is_finished():
                    raise StreamAborted(_TOO_MUCH)
                return out

            self._decode = br_decode
            self._encode = lambda data: benc.process(data) + benc.flush()
            self._finish = benc.finish
        else:
            sdec = [zstd.ZstdDecompressor()]
            senc = zstd.ZstdCompressor()

            def zstd_decode(chunk: bytes, most: int) -> bytes:
                out = sdec[0].decompress(chunk, max_length=most)
                while True:
                    if len(out) >= most and not sdec[0].needs_input:
                        raise StreamAborted(_TOO_MUCH)
                    if not (sdec[0].eof and sdec[0].unused_data):
                        return out
                    rest = sdec[0].unused_data  # another frame follows
                    sdec[0] = zstd.ZstdDecompressor()
                    out += sdec[0].decompress(rest, max_length=max(1, most - len(out)))

            self._decode = zstd_decode
            self._encode = lambda data: senc.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)
            self._finish = lambda: senc.flush(zstd.ZstdCompressor.FLUSH_FRAME)

    def __call__(self, chunk: bytes) -> bytes:
        try:
            if not chunk:  # the end
                if self._decode is None:
                    return b""
                return self._encode(self._scan(b"")) + self._finish()
            if self._decode is None:
                self._start(chunk)
            assert self._decode is not None
            self._encoded += len(chunk)
            most = max(EXPANSION_FLOOR, self._encoded * MAX_EXPANSION) - self._decoded + 1
            plain = self._decode(chunk, most)
            self._decoded += len(plain)
            return self._encode(self._scan(plain))
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as exc:
            raise StreamAborted(f"it does not decode as {self._encoding}: {exc}") from None
        except StreamAborted as exc:
            raise StreamAborted(f"{exc} ({self._encoding}, {self._encoded} bytes received)") \
                from None


def pieces(rewrite: Callable[[bytes], bytes]) -> Callable[[bytes], list[bytes]]:
    """A ``response.stream`` function from a bytes-to-bytes rewrite: mitmproxy sends every
    piece returned as a chunk, and an empty one over HTTP/1.1 would end the body."""
    def stream(chunk: bytes) -> list[bytes]:
        out = rewrite(chunk)
        return [out] if out else []
    return stream


RECODED = ("gzip", "deflate", "br", "zstd")
