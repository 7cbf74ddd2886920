"""RingCentral platform emulator: a real HTTP server implementing the platform's token rules.

Run it with ``python -m rc_emulator`` (see :mod:`rc_emulator.server` and ``emulator/README.md``:
options, rate limits, admin routes).
The platform logic lives in :mod:`.state` (no HTTP), the routes in :mod:`.api` and
:mod:`.admin`, the application wiring in :mod:`.app`.
"""
