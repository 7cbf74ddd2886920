"""OpenTelemetry tracing (issue 19, item 5): where the spans go, set up once per process.

``[tracing] otlp_endpoint`` set: :func:`start_tracing` installs the process's tracer provider
(parent-based sampling at ``sample_ratio``, ``service.name``) whose spans a background
thread sends in batches over OTLP/HTTP (protobuf) — an unreachable collector never slows a
request: spans wait in a bounded queue, then are dropped. :meth:`Tracing.shutdown` sends what
is left on exit, for at most a few seconds. Not set: nothing is installed, the OpenTelemetry
API's tracers stay no-ops and the gateway adds no span addon.

The spans, one trace per request: the gateway's request span
(:mod:`proxy_addon.gateway.request_span`, the app's ``traceparent`` as its parent; the
``traceparent`` sent upstream is the proxy's own span), the renewal it triggered
(:mod:`proxy_addon.tokens.renewal`; a timer's renewal is a trace of its own) and the token
call of that renewal (:mod:`proxy_addon.upstream.token_endpoint`). Attributes hold names,
codes and numbers from bounded sets — never a token, a client secret, a JWT, a client key
or a body; the exporter's headers (``headers_env``, an API key) are registered as secrets so
no log line prints them. A collector that is down is logged at most once a minute (the
exporter's retries not at all).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..config.model import TracingConfig
from .logs import SECRETS

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

log = logging.getLogger("tokenproxy.tracing")

EXPORT_TIMEOUT = 5.0  # s per export call to the collector (the exporter retries within it)
FLUSH_TIMEOUT = 2.0  # s the last spans get to leave on exit
_PROPAGATOR = TraceContextTextMapPropagator()  # traceparent/tracestate only, never baggage


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """The context of a (valid) W3C ``traceparent`` in ``headers``; empty without one."""
    return _PROPAGATOR.extract(headers)


def inject(headers: MutableMapping[str, str],
           context: otel_context.Context | None = None) -> None:
    """Set ``traceparent`` (and ``tracestate``) of the current span, or of ``context``'s; no
    span (tracing off): nothing is set."""
    _PROPAGATOR.inject(headers, context=context)


class _Exporter:
    """The OTLP exporter (a ``SpanExporter``) with an idempotent shutdown that also cuts a
    retry short (a dead collector must not hold the exit)."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export(spans)

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class Tracing:
    """The process's tracer provider and its batch processor."""

    def __init__(self, provider: TracerProvider, processor: BatchSpanProcessor,
                 exporter: _Exporter) -> None:
        self.provider = provider
        self._processor = processor
        self._exporter = exporter

    def shutdown(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Send the spans still queued, for at most about ``timeout`` seconds, then stop.

        The SDK's flush ignores its timeout (it exports in the caller's thread, retrying a
        dead collector for the whole export timeout): it runs in a thread of its own here,
        and shutting the exporter down ends its retries."""
        flush = threading.Thread(target=self._processor.force_flush, name="otel-flush",
                                 daemon=True)
        flush.start()
        flush.join(timeout)
        self._exporter.shutdown()
        self.provider.shutdown()


def start_tracing(config: TracingConfig, environ: Mapping[str, str] | None = None, *,
                  exporter: SpanExporter | None = None, install: bool = True) -> Tracing | None:
    """The tracer provider ``[tracing]`` asks for, installed as the process's (``install``),
    or None when tracing is off. ``exporter``: instead of OTLP/HTTP (tests)."""
    if not config.enabled:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    environ = os.environ if environ is None else environ
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = config.headers(environ)
        SECRETS.add(headers.values(), fixed=True)
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=headers,
                                    timeout=EXPORT_TIMEOUT)
    quiet_exporter_logs()
    wrapped = _Exporter(exporter)
    processor = BatchSpanProcessor(wrapped)  # type: ignore[arg-type]  # a SpanExporter
    provider = TracerProvider(resource=resource(config),
                              sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    provider.add_span_processor(processor)
    if install:
        trace.set_tracer_provider(provider)
    log.info("tracing: spans to %s (service %s, sample ratio %g)", config.otlp_endpoint,
             config.service_name, config.sample_ratio)
    return Tracing(provider, processor, wrapped)


class _OncePerMinute(logging.Filter):
    """The exporter's errors at most once a minute (a dead collector fails every batch), its
    retry warnings not at all."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -60.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return False
        now = time.monotonic()
        if now - self._last < 60.0:
            return False
        self._last = now
        return True


_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                     "opentelemetry.exporter.otlp.common.http")


def quiet_exporter_logs() -> None:
    """Give the OTLP exporter's loggers (a filter applies to its own logger's records only)
    one once-a-minute filter."""
    quiet = _OncePerMinute()
    for name in _EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerMinute) for f in logger.filters):
            logger.addFilter(quiet)


def resource(config: TracingConfig) -> Resource:
    """Who sends the spans: ``service.name``, this process, the package's version."""
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, str] = {
        "service.name": config.service_name,
        "service.instance.id": f"{socket.gethostname()}/{os.getpid()}",
    }
    try:
        from importlib.metadata import version

        attributes["service.version"] = version("tokenproxy")
    except Exception:  # not installed as a distribution (a source tree on sys.path)
        pass
    return Resource.create(attributes)
