"""The application ray_config.yaml names deploys on the shared local Ray and answers over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_ray_config_app_deploys_and_answers_healthz(ray_session):
    from ray import serve

    from cluster.broker import free_port
    from serve.app import build_app

    port = free_port()
    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    app_cfg = raw["applications"][0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(app_cfg["args"]), name=app_cfg["name"], route_prefix=app_cfg["route_prefix"])
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        s = httpx.get(f"http://127.0.0.1:{port}/v1/settings", timeout=30).json()
        assert s["kafka"]["topics"]["impressions"] == "streamrec.impressions"
    finally:
        serve.shutdown()
