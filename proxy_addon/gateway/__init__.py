"""The mitmproxy side: the addons a request passes through, one concern each, in the order
:class:`.master.Gateway` registers them: :mod:`.guard` (what may not go on), :mod:`.identify`
(who calls), :mod:`.login` (logins through the proxy), :mod:`.inject` (the account's token in,
leases out), :mod:`.replay` (token 401 → renew → send again), :mod:`.links` (links point at the
proxy; :mod:`.link_scanner`, :mod:`.link_stream`), :mod:`.request_metrics` (counted) and
:mod:`.listening` (where it serves). They share one :class:`.flow_context.FlowContext` per flow.
:mod:`.errors` and :mod:`.unavailable` turn failures into the proxy's HTTP answers;
:mod:`.early_answer` and :mod:`.stream_abort` adapt mitmproxy's HTTP layer.
"""
