"""The mitmproxy side: the addons a request passes through, in the order
:mod:`.master` registers them (guard, identify, login, inject, replay, links, access log),
and :mod:`.errors`, which turns failures into the proxy's HTTP answers.
"""
