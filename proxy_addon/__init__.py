"""tokenproxy: a mitmproxy addon that owns the RingCentral OAuth token lifecycle.

Data flow: :mod:`config` → :mod:`pool` (token sets, renewals via :mod:`oauth`) →
:mod:`addon` (inject on each request, replay via :mod:`replay`) inside the lean mitmproxy
master of :mod:`master`, started by :mod:`runner` from the :mod:`cli`.
"""

__version__ = "0.1.0"
