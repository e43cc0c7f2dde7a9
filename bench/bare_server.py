"""The peer of bench/serve.py: the same encoder and ranker code in one uvicorn + FastAPI process.

    python -m bench.bare_server --args-json '{...}' --port 8123

No Serve, no Ray actors: the policy is read straight from the store directory, the context
encoder runs inline, impressions are not logged. What users would write by hand.
"""

from __future__ import annotations

import argparse
import json
import uuid

import uvicorn
from fastapi import FastAPI

from actors.policy_store import PolicyDirectory
from serve.api import RecommendRequest
from serve.replica import Replica
from streamrec.config import settings_from_args
from streamrec.encoder import TextEncoder


def make_app(args: dict) -> FastAPI:
    settings = settings_from_args(args)
    core = Replica(settings, PolicyDirectory(settings.trainer.store_dir))
    encoder = TextEncoder(settings.encoder.model, max_length=settings.encoder.max_length)
    cache: dict[str, object] = {}
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/recommend")
    def recommend(req: RecommendRequest):
        vec = None
        if req.context is not None and req.context.text:
            vec = cache.get(req.context.text)
            if vec is None:
                vec = cache[req.context.text] = encoder.encode([req.context.text])[0]
        r = core.rank(req.model_dump(exclude_none=True), vec)
        return {"event_id": uuid.uuid4().hex, "policy_version": r["policy_version"],
                "items": [{"item_id": i, "score": s, "propensity": p, "position": j}
                          for j, (i, s, p) in enumerate(zip(r["items"], r["scores"], r["propensities"]))]}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--args-json", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    uvicorn.run(make_app(json.loads(a.args_json)), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
