"""The states an account's token lifecycle can be in (shown by status, metrics, health)."""

from __future__ import annotations

import enum


class AccountState(enum.StrEnum):
    IDLE = "idle"  # no token acquired yet
    HEALTHY = "healthy"
    REFRESHING = "refreshing"
    BACKING_OFF = "backing_off"
    REAUTH_REQUIRED = "reauth_required"
    MISCONFIGURED = "misconfigured"
