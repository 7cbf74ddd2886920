"""A legacy app written with the official RingCentral Python SDK (PyPI ``ringcentral``), pointed
at the proxy and otherwise unchanged. Run by tests/e2e/test_sdk_e2e.py; prints one JSON summary line
and exits non-zero on the first failure.

Environment: SERVER (the proxy URL), CLIENT_ID, CLIENT_SECRET, JWT, USERNAME, EXTENSION,
PASSWORD, DURATION (seconds to keep going; at least one round).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from ringcentral import SDK

EXT = "/restapi/v1.0/account/~/extension/~"


def main() -> int:
    env = os.environ
    jwt_sdk = SDK(env["CLIENT_ID"], env["CLIENT_SECRET"], env["SERVER"], "legacy-app", "1.0")
    jwt_platform = jwt_sdk.platform()
    jwt_platform.login(jwt=env["JWT"])
    pw_platform = SDK(env["CLIENT_ID"], env["CLIENT_SECRET"], env["SERVER"]).platform()
    pw_platform.login(env["USERNAME"], env["EXTENSION"], env["PASSWORD"])
    done = {"extension": 0, "sms": 0, "fax": 0, "pages": 0, "recordings": 0}
    end = time.monotonic() + float(env.get("DURATION", "10"))
    for _ in range(1000):  # bounded; ends by DURATION
        if done["sms"] and time.monotonic() >= end:
            break
        for platform, owner in ((jwt_platform, 100001), (pw_platform, 100002)):
            assert platform.get(EXT).json_dict()["id"] == owner
            done["extension"] += 1
        sms = jwt_platform.post(EXT + "/sms", {
            "from": {"phoneNumber": "+15550100001"}, "to": [{"phoneNumber": "+15550109999"}],
            "text": "through the proxy"}).json_dict()
        assert sms["type"] == "SMS", sms
        done["sms"] += 1
        builder = jwt_sdk.create_multipart_builder()
        builder.set_body({"to": [{"phoneNumber": "+15550109999"}], "faxResolution": "High"})
        builder.add(("cover.txt", "a fax through the proxy\n" * 200, "text/plain"))
        builder.add(("page.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 400, "application/pdf"))
        fax = jwt_platform.send_request(builder.request(EXT + "/fax")).json_dict()
        assert fax["type"] == "Fax" and fax["parts"] == 3, fax
        done["fax"] += 1
        url, content_uri = EXT + "/call-log?perPage=10&view=Detailed", None
        for _ in range(50):  # follow navigation.nextPage.uri to the end
            page = jwt_platform.get(url).json_dict()
            done["pages"] += 1
            for record in page["records"]:
                if "recording" in record and content_uri is None:
                    content_uri = record["recording"]["contentUri"]
            next_page = page["navigation"].get("nextPage")
            if not next_page:
                break
            url = next_page["uri"]
            assert url.startswith(env["SERVER"]), url  # the link leads back to the proxy
        assert content_uri and content_uri.startswith(env["SERVER"]), content_uri
        body = jwt_platform.get(content_uri).body()
        rec_id = content_uri.rstrip("/").split("/")[-2]
        done["recordings"] += 1
        done.setdefault("recording_sha256", {})[rec_id] = hashlib.sha256(body).hexdigest()
        done.setdefault("recording_size", {})[rec_id] = len(body)
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
