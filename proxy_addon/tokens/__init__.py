"""The token lifecycle, free of mitmproxy, HTTP and I/O of its own.

Data flow: the gateway leases tokens from :mod:`.pool` (:class:`~.pool.TokenPool`, one
:class:`~.account.AccountTokens` per account: generations, leases, drain, states from
:mod:`.states`). Renewals (:mod:`.renewal`) go through the ports it is given (:mod:`.ports`:
the platform, the store, an observer) within the app's call budget (:mod:`.budget`); their
timing (:mod:`.schedule`) and every wait read one injected clock (:mod:`.clock`). What cannot be
had is a :class:`~.failures.TokenUnavailable` (a reason, no HTTP). Tunables: :mod:`.settings`;
the token set itself: :mod:`.token_set`.
"""
