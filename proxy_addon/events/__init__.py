"""Real-time events (issue 18): apps' WebSocket subscriptions served by the proxy.

An app asks for a ws token (:mod:`.ws_tokens`, answered by :mod:`proxy_addon.gateway.events_route`
without a platform call), connects to the proxy's WebSocket route, and is served by the
:mod:`.hub` as if it had the platform's gateway to itself (:mod:`.app_session`). Per account a
:mod:`.channel` keeps few upstream sockets (:mod:`.upstream_link`), merges the apps' event filters
(:mod:`.filters`) into their subscriptions, routes each notification to the apps it matches and
recovers dropped sockets. :mod:`.frames` reads and writes the protocol's ``[meta, body]`` frames.
"""
