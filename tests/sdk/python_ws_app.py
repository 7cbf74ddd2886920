"""A legacy app subscribing to events with the official RingCentral Python SDK's WebSocket client
(PyPI ``ringcentral``, ``ringcentral.websocket``), as in ringcentral-api-docs
``code-samples/websockets/quick-start.py``, pointed at the proxy and otherwise unchanged. Run by
tests/events/test_events_sdk_e2e.py.

Environment: SERVER (the proxy URL), CLIENT_ID, CLIENT_SECRET, JWT, FILTERS (a JSON list).
Prints JSON lines: ``{"ready": subscriptionId}`` once subscribed, ``{"event": body}`` per
notification, ``{"closed": reason}`` if the SDK's socket ends (the SDK has no recovery: the proxy
must never close it). Runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from ringcentral import SDK
from ringcentral.websocket.events import WebSocketEvents


def out(value: object) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def main() -> None:
    env = os.environ
    sdk = SDK(env["CLIENT_ID"], env["CLIENT_SECRET"], env["SERVER"])
    sdk.platform().login(jwt=env["JWT"])
    client = sdk.create_web_socket_client()
    client.on(WebSocketEvents.subscriptionCreated,
              lambda sub: out({"ready": sub.get_subscription_info()[1]["id"]}))
    client.on(WebSocketEvents.receiveSubscriptionNotification,
              lambda message: out({"event": message[1]}))
    try:
        await asyncio.gather(client.create_new_connection(),
                             client.create_subscription(json.loads(env["FILTERS"])))
    except Exception as exc:  # the socket ended: the test fails on this line
        out({"closed": exc.__class__.__name__})
        raise


if __name__ == "__main__":
    asyncio.run(main())
