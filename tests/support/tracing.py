"""Test helpers for OpenTelemetry (issue 19, item 5): the process's tracer provider, installed
once per test process by the product's own :func:`~proxy_addon.ops.tracing.start_tracing`
(batching included) but exporting to memory; and every string a span holds, to search for
secrets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy_addon.config.model import TracingConfig
from proxy_addon.ops.tracing import Tracing, start_tracing


class KeptSpans(InMemorySpanExporter):
    """Keeps spans only while ``keep`` (a tracing test runs): the provider stays installed
    for the rest of the test process, whose other tests must not fill memory with spans."""

    keep = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return super().export(spans) if self.keep else SpanExportResult.SUCCESS


_INSTALLED: tuple[Tracing, KeptSpans] | None = None


def memory_tracing() -> tuple[Tracing, KeptSpans]:
    """The process's tracing, exporting to memory (OpenTelemetry allows one provider per
    process: the first call installs it, later calls return it)."""
    global _INSTALLED
    if _INSTALLED is None:
        exporter = KeptSpans()
        tracing = start_tracing(TracingConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces"),
                                exporter=exporter)
        assert tracing is not None
        assert trace.get_tracer_provider() is tracing.provider, (
            "another tracer provider was installed in this test process first")
        _INSTALLED = tracing, exporter
    return _INSTALLED


def finished_spans() -> list[ReadableSpan]:
    """Every span ended so far (the batch processor flushed first)."""
    tracing, exporter = memory_tracing()
    assert tracing.provider.force_flush(5000)
    return list(exporter.get_finished_spans())


def span_strings(spans: list[ReadableSpan]) -> Iterator[str]:
    """Every name, attribute value, event, link and status text of ``spans`` as text."""
    for span in spans:
        yield span.name
        if span.status.description:
            yield span.status.description
        attribute_sets = [span.attributes or {}, span.resource.attributes]
        attribute_sets += [event.attributes or {} for event in span.events]
        attribute_sets += [link.attributes or {} for link in span.links]
        yield from (event.name for event in span.events)
        for attributes in attribute_sets:
            for key, value in attributes.items():
                yield str(key)
                yield str(value)
