"""REST over the socket spends the account's API budget like REST over HTTP (issue 17).

A ``ClientRequest`` is an API call the platform counts in its operation's rate-limit group (the
emulator answers it with the same ``X-Rate-Limit-*`` headers as over HTTP), so an app cannot use
the socket to get around the governor: each one waits for its group's slot (fairly between the
account's apps, at most ``[rate_limits] max_wait``) or is answered 429 ``TPX-RATE-LIMITED`` by the
proxy, and its answer's headers teach the governor, a platform 429 starting the group's penalty.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import ClientConfig
from ..ratelimit.gate import RateRefused
from ..ratelimit.governor import ClientShare, Governor


@dataclass(frozen=True, slots=True)
class Admission:
    group: str | None
    operation: str
    admitted: float | None


class RestBudget:
    def __init__(self, governor: Governor, clients: list[ClientConfig]) -> None:
        self._governor = governor
        self._shares = {c.name: ClientShare(c.name, c.rate_weight, dict(c.rate_quota))
                        for c in clients}

    def clients_changed(self, clients: list[ClientConfig]) -> None:
        self._shares = {c.name: ClientShare(c.name, c.rate_weight, dict(c.rate_quota))
                        for c in clients}

    async def admit(self, account: str, client: str, method: str, path: str) -> Admission:
        """A slot for the request, waiting fairly; raises :class:`RateRefused`."""
        governor = self._governor
        operation, group = governor.classify(method, path)
        if group is None:
            return Admission(None, operation, None)
        share = self._shares.get(client) or self._shares.setdefault(client, ClientShare(client))
        stamp = governor.try_admit(account, group, share)
        if stamp is None:
            _, stamp, _ = await governor.wait(account, group, share,
                                              governor.deadline(time.time()))
        return Admission(group, operation, stamp)

    def learn(self, account: str, method: str, admission: Admission,
              headers: Mapping[str, str], status: int) -> None:
        governor = self._governor
        latency = governor.now() - admission.admitted if admission.admitted is not None else None
        group = governor.learn(account, method, admission.operation, admission.group, headers,
                               latency, status) or admission.group
        if status == 429 and group is not None:
            governor.penalize(account, group, headers)


__all__ = ["Admission", "RateRefused", "RestBudget"]
