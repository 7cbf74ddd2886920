"""One legacy app process that logs in through the proxy every 2 s and calls the API with the
token it got (run 20 at once by tests/virtual/test_login_e2e.py). Prints "ok=N failed=M".

Arguments: SERVER CLIENT_ID CLIENT_SECRET JWT SECONDS
"""

from __future__ import annotations

import sys
import time

import httpx

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def main(server: str, client_id: str, secret: str, jwt: str, seconds: str) -> int:
    ok = failed = 0
    end = time.monotonic() + float(seconds)
    with httpx.Client(base_url=server, timeout=30) as http:
        for _ in range(1000):  # bounded; ends by SECONDS
            if time.monotonic() >= end:
                break
            login = http.post("/restapi/oauth/token", auth=(client_id, secret),
                              data={"grant_type": JWT_GRANT, "assertion": jwt})
            good = login.status_code == 200 and http.get(
                "/restapi/v1.0/account/~/extension/~",
                headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            ).status_code == 200
            ok, failed = ok + good, failed + (not good)
            time.sleep(2)
    print(f"ok={ok} failed={failed}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
