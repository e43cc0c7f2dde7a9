"""An open API is refused whoever deploys it: Serve bound to 0.0.0.0 and no API keys.

Run by ``test_exposure.py`` in a process of its own (it starts its own Ray and Serve on 0.0.0.0,
which the test session's Serve, on 127.0.0.1, cannot be moved to). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    os.environ.pop("STREAMREC_API_KEYS", None)
    import ray
    from ray import serve

    from serve.api import AuthConfigError
    from serve.app import build_app, build_app_from_config, serve_http_host

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out: dict = {"host_before_serve": None}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        out["host_before_serve"] = serve_http_host()
        build_app({})  # no Serve yet: nothing to check against
        serve.start(http_options={"host": "0.0.0.0", "port": port})
        out["host"] = serve_http_host()
        for name, build in (("build_app", lambda: build_app({})),
                            ("build_app_from_config", lambda: build_app_from_config({}, []))):
            try:
                build()
                out[name] = "built"
            except AuthConfigError as e:
                out[name] = str(e)
        os.environ["STREAMREC_API_KEYS"] = "a-key-of-16-chars"
        build_app({})
        out["with_keys"] = "built"
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
