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

__all__ = ["render"]


def _env(haproxy: bool = False) -> list[dict]:
    return [*([{"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"}] if haproxy else []),
        {"name": "STREAMREC_KAFKA_BOOTSTRAP",
         "valueFrom": {"secretKeyRef": {"name": "streamrec", "key": "kafka-bootstrap"}}},
        {"name": "STREAMREC_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "streamrec", "key": "api-keys"}}},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]


def _container(image: str, cpu: str, mem: str, gpu: int = 0, haproxy: bool = False) -> dict:
    limits = {"cpu": cpu, "memory": mem}
    if gpu:
        limits["nvidia.com/gpu"] = str(gpu)
    return {"name": "ray", "image": image, "env": _env(haproxy), "resources": {"limits": limits, "requests": limits}}


def render(config_text: str, image: str = "streamrec:latest", name: str = "streamrec") -> dict:
    raw = yaml.safe_load(config_text)  # must parse
    app = next((a for a in raw.get("applications") or [] if a.get("import_path") == "serve.app:build_app"), {})
    haproxy = ((app.get("args") or {}).get("serve") or {}).get("proxy") == "haproxy"  # serve.proxy: cluster-wide
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
                    "template": {"spec": {"containers": [_container(image, "4", "16Gi", haproxy=haproxy)]}},
                },
                "workerGroupSpecs": [
                    {"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 10, "rayStartParams": {},
                     "template": {"spec": {"containers": [_container(image, "8", "32Gi", haproxy=haproxy)]}}},
                    {"groupName": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 4, "rayStartParams": {},
                     "template": {"spec": {"containers": [_container(image, "16", "64Gi", gpu=1, haproxy=haproxy)]}}},
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
