"""What operators see: the admin listener (``/metrics``, ``/status``), Prometheus
metrics and the structured logs with secret redaction.
"""
