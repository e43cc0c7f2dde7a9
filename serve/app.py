"""``build_app(args)``: the Serve application ``ray_config.yaml`` names (``serve.app:build_app``).

Serve calls it with the application's ``args``; they are validated here first, so a bad value
fails the deploy with its key path instead of failing inside a replica. Today the application is
the Ingress with its health and settings endpoints; the ContextEncoder and Ranker deployments
and the recommend/feedback API arrive with the serving issue and compose here with ``.bind()``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from streamrec.config import StreamrecSettings, settings_from_args

__all__ = ["build_app", "Ingress"]

api = FastAPI(title="streamrec", description="A streaming recommender that learns while it serves.")


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict[str, Any]):
        self.settings = StreamrecSettings.model_validate(settings)

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/settings")
    def public_settings(self) -> dict[str, Any]:
        """The effective settings, secrets masked."""
        return self.settings.public_dict()


def build_app(args: dict[str, Any] | None = None):
    settings = settings_from_args(args or {})
    # weights never travel this way; only plain settings (secrets stay SecretStr-masked on dump)
    plain = settings.model_dump(mode="python")
    plain["auth"] = {"api_keys": [k.get_secret_value() for k in settings.auth.api_keys]}
    return Ingress.bind(plain)
