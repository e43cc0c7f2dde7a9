"""Render a KubeRay RayService manifest whose ``serveConfigV2`` is ray_config.yaml, unchanged.

    python -m cluster.kuberay.render [--config ray_config.yaml] [--image IMAGE] > rayservice.yaml

The head and worker groups autoscale (KubeRay's in-tree autoscaler); GPU workers carry
``nvidia.com/gpu`` so the embedding job's encoder actors (``num_gpus=1``) land there.
Secrets come from a Kubernetes Secret ``streamrec`` (keys ``kafka-bootstrap``, ``api-keys``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from streamrec.config import SERVE_MODE_ENV

__all__ = ["render"]


def _env(serve_env: dict[str, str]) -> list[dict]:
    return [*({"name": k, "value": v} for k, v in serve_env.items()),
        {"name": "STREAMREC_KAFKA_BOOTSTRAP",
         "valueFrom": {"secretKeyRef": {"name": "streamrec", "key": "kafka-bootstrap"}}},
        {"name": "STREAMREC_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "streamrec", "key": "api-keys"}}},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]


def _container(image: str, cpu: str, mem: str, serve_env: dict[str, str], gpu: int = 0) -> dict:
    limits = {"cpu": cpu, "memory": mem}
    if gpu:
        limits["nvidia.com/gpu"] = str(gpu)
    return {"name": "ray", "image": image, "env": _env(serve_env), "resources": {"limits": limits, "requests": limits}}


def render(config_text: str, image: str = "streamrec:latest", name: str = "streamrec") -> dict:
    raw = yaml.safe_load(config_text)  # must parse
    app = next((a for a in raw.get("applications") or [] if a.get("import_path") == "serve.app:build_app"), {})
    mode = ((app.get("args") or {}).get("serve") or {}).get("mode", "standard")
    serve_env = SERVE_MODE_ENV[mode]  # serve.mode is cluster-wide: every node's environment
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": config_text,
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"spec": {"containers": [_container(image, "4", "16Gi", serve_env)]}},
                },
                "workerGroupSpecs": [
                    {"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 10, "rayStartParams": {},
                     "template": {"spec": {"containers": [_container(image, "8", "32Gi", serve_env)]}}},
                    {"groupName": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 4, "rayStartParams": {},
                     "template": {"spec": {"containers": [_container(image, "16", "64Gi", serve_env, gpu=1)]}}},
                ],
            },
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "ray_config.yaml"))
    ap.add_argument("--image", default="streamrec:latest")
    args = ap.parse_args(argv)
    yaml.safe_dump(render(Path(args.config).read_text(), args.image), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
