"""The token core's tunables, read from the config by the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class PoolSettings:
    token_wait_timeout: float = 10.0  # how long a request waits for a renewal
    refresh_ahead: float = 60.0  # refresh this long before expiry (capped to a share of TTL)
    refresh_ahead_share: float = 0.04  # ... never more than this share of the token lifetime
    drain_timeout: float = 2.0  # longest wait for in-flight requests before a refresh-ahead
    keepalive_share: float = 0.25  # refresh idle accounts this share of refresh TTL early ...
    keepalive_max: float = 36 * 3600.0  # ... at most this early (an alert fires below 24 h)
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    misconfigured_backoff: float = 30.0  # wrong credentials: do not hammer the endpoint
    auth_budget_calls: int = 5  # token-endpoint calls per app (client id) ...
    auth_budget_window: float = 60.0  # ... per this many seconds; 0 calls = unlimited
    reauth_poll: float = 1.0  # how often a reauth_required account looks for a new session
    lock_lease: float = 6.0  # how long a crashed process can block an account's renewal
    # the longest a token call may take (the upstream timeout): a process waiting for another
    # one's renewal waits this long beyond the lease before it calls the work lost
    token_call_timeout: float = 60.0
    store_retry: float = 1.0  # how soon renewals try an unreachable store again

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings:
        proxy = config.proxy
        return cls(token_wait_timeout=proxy.token_wait_timeout,
                   refresh_ahead=proxy.refresh_ahead,
                   refresh_ahead_share=proxy.refresh_ahead_share,
                   drain_timeout=proxy.drain_timeout,
                   auth_budget_calls=proxy.auth_budget_calls,
                   auth_budget_window=proxy.auth_budget_window,
                   lock_lease=config.store.lock_lease,
                   token_call_timeout=proxy.upstream_timeout)

    @property
    def safe_budget_window(self) -> float:
        """The budget window with a margin for clock and latency skew against the platform."""
        return self.auth_budget_window * 1.02 + 0.5
