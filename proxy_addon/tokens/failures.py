"""Why an account cannot hand out a token right now, as data.

Raised by the core (:mod:`.account`, :mod:`.renewal`) to whoever asked for a token; the
gateway turns it into an HTTP answer
(:func:`proxy_addon.gateway.errors.token_unavailable_response`).
Nothing here is HTTP or client-facing text: a reason, the account, a diagnostic detail and
when to try again.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    REAUTH_REQUIRED = "reauth_required"  # a person must authorize the account again
    BUDGET_EXHAUSTED = "budget_exhausted"  # the proxy's own token-call budget is spent
    RATE_LIMITED = "rate_limited"  # the platform's token endpoint answered 429
    MISCONFIGURED = "misconfigured"  # the platform refused the account's credentials
    ENDPOINT_FAILED = "endpoint_failed"  # any other token-endpoint refusal or 5xx
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  # no answer from the platform
    STORE_UNREACHABLE = "store_unreachable"  # the store raised: no renewal without it
    STORE_NOT_ANSWERING = "store_not_answering"  # the wait ended while the store hung
    LOCK_HELD = "lock_held"  # another process holds the renewal lock and did not finish
    TIMEOUT = "timeout"  # the request's wait for a renewal ran out
    NO_TOKEN = "no_token"  # nothing to serve, no more specific cause known


class TokenUnavailable(Exception):
    """No token can be had for ``account`` now.

    ``detail``: the cause (an error code, the exception text, ...); ``hint``: what an operator
    can do; ``waited``: for TIMEOUT, the wait bound in seconds; ``retry_after``: seconds until
    a retry may succeed (None: not known, or only after a person acts)."""

    def __init__(self, reason: Reason, account: str, detail: str = "", *,
                 hint: str = "", retry_after: float | None = None,
                 waited: float | None = None) -> None:
        super().__init__(f"{account}: {reason.value}" + (f" ({detail})" if detail else ""))
        self.reason, self.account, self.detail, self.hint = reason, account, detail, hint
        self.retry_after, self.waited = retry_after, waited
