"""KubeRay manifests for streamrec: a RayService that serves, and RayJobs that run the loop on its cluster.

    python -m cluster.kuberay.render service --image REGISTRY/streamrec:TAG > rayservice.yaml
    kubectl apply -f rayservice.yaml
    CLUSTER=$(kubectl get rayservice streamrec -o jsonpath='{.status.activeServiceStatus.rayClusterName}')
    python -m cluster.kuberay.render jobs --image REGISTRY/streamrec:TAG --cluster "$CLUSTER" | kubectl apply -f -

**One Ray cluster, the RayService's.** Ranker replicas find the PolicyStore and the ProfileStore
by name, and named actors live in one Ray cluster, so the embed, stream and train jobs must run
on the cluster that serves. Each is a RayJob whose ``clusterSelector`` names the RayService's
active RayCluster (KubeRay looks it up by name; a RayService names its clusters itself, hence the
second step). After a RayService upgrade that replaces the cluster, render the jobs for the new
one; the store and checkpoints on the shared volume carry the lineage over.

What the RayService holds: ``serveConfigV2`` = ``ray_config.yaml`` plus a production overlay
(HTTP on 0.0.0.0 inside the pod network, which requires API keys from a Secret; replica counts;
every path on a shared volume, or under ``--storage s3://...``); Ray token authentication (``authOptions: {mode: token}``); GCS
fault tolerance on an external Redis (address and password from a Secret), so a head restart
keeps the named detached actors recoverable; the in-tree autoscaler; a CPU worker group and a GPU
worker group from zero (``nvidia.com/gpu``) for the encoder actors; ``rayVersion`` = the
installed Ray. Every manifest is validated against KubeRay's CRD schemas in the tests.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from serve.haproxy_ingress import ingress_env
from streamrec.config import APP_IMPORT_PATH, ConfigError, settings_from_args

__all__ = ["RenderOptions", "RenderError", "render_service", "render_jobs", "render_all", "JOBS"]

#: job name -> its entrypoint module (``python -m``)
JOBS = {"embed": "cluster.jobs.embed", "stream": "cluster.jobs.stream", "train": "cluster.jobs.train"}
CONFIG_IN_IMAGE = "/home/ray/streamrec/ray_config.yaml"
#: streamrec-haproxy in the image (the Dockerfile's `pip install .` puts console scripts in /usr/local/bin)
HAPROXY_IN_IMAGE = "/usr/local/bin/streamrec-haproxy"


class RenderError(ValueError):
    """A render option or the config cannot make a valid deployment; the message names the field."""


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    cpu: str
    memory: str
    min_replicas: int
    max_replicas: int
    gpus: int = 0


@dataclass(frozen=True)
class RenderOptions:
    image: str
    """The streamrec image, by the tag you built and pushed (the Dockerfile at the repository root)."""
    name: str = "streamrec"
    secret: str = "streamrec"
    """Kubernetes Secret with ``api-keys`` (comma separated), ``kafka-bootstrap``, optionally
    ``admin-keys`` (the operators' keys for the admin routes) and, for SASL, ``kafka-username`` /
    ``kafka-password``."""
    redis_address: str | None = "streamrec-redis:6379"
    """External Redis for GCS fault tolerance (None: no fault tolerance)."""
    redis_secret_key: str = "redis-password"
    """Key of the Redis password in ``secret``."""
    volume_claim: str = "streamrec-data"
    """PersistentVolumeClaim (ReadWriteMany) mounted on every pod: embeddings, policies, checkpoints, profiles."""
    mount_path: str = "/data/streamrec"
    storage: str | None = None
    """Object storage for the artifacts instead of the volume (``s3://bucket/prefix``); the pods read
    ``aws-access-key-id``, ``aws-secret-access-key`` and (optional) ``aws-endpoint-url`` from ``secret``."""
    head: WorkerGroup = WorkerGroup("head", "2", "8Gi", 1, 1)
    workers: tuple[WorkerGroup, ...] = (WorkerGroup("cpu", "8", "32Gi", 1, 10),
                                        WorkerGroup("gpu", "8", "48Gi", 0, 4, gpus=1))
    ranker_replicas: tuple[int, int] = (2, 16)
    idle_timeout_s: int = 60
    extra_env: dict[str, str] = field(default_factory=dict)


def _check(opts: RenderOptions) -> None:
    if not opts.image or not opts.image.strip():
        raise RenderError("image: give the streamrec image (REGISTRY/streamrec:TAG, built from the Dockerfile)")
    if ":" not in opts.image.rsplit("/", 1)[-1] and "@" not in opts.image:
        raise RenderError(f"image: {opts.image!r} has no tag; pin one (a moving :latest cannot be rolled back)")
    if opts.storage is not None and "://" not in opts.storage:
        raise RenderError(f"storage: {opts.storage!r} is not a URI (s3://bucket/prefix); "
                          "for a shared volume use volume_claim and mount_path")
    if not opts.secret:
        raise RenderError("secret: the API keys of a non-loopback HTTP host come from a Secret; name it")
    for g in opts.workers:
        if g.gpus < 0 or g.min_replicas < 0 or g.max_replicas < max(1, g.min_replicas):
            raise RenderError(f"workers.{g.name}: replicas must satisfy 0 <= min <= max, max >= 1, gpus >= 0")
        if g.name == "gpu" and g.gpus < 1:
            raise RenderError("workers.gpu: a GPU group needs gpus >= 1 (its nvidia.com/gpu limit)")
    lo, hi = opts.ranker_replicas
    if not 1 <= lo <= hi:
        raise RenderError(f"ranker_replicas: need 1 <= min <= max, got {lo}, {hi}")


def production_config(config_text: str, opts: RenderOptions) -> str:
    """``ray_config.yaml`` with the production overlay, as YAML text (what ``serveConfigV2`` holds)."""
    raw = yaml.safe_load(config_text)
    apps = [a for a in raw.get("applications") or [] if a.get("import_path") == APP_IMPORT_PATH]
    if len(apps) != 1:
        raise RenderError(f"applications: need exactly one application with import_path {APP_IMPORT_PATH!r}")
    out = copy.deepcopy(raw)
    out["http_options"] = {**(raw.get("http_options") or {}), "host": "0.0.0.0"}  # the pod network: keys required
    app = next(a for a in out["applications"] if a.get("import_path") == APP_IMPORT_PATH)
    args = app.setdefault("args", {})
    d = (opts.storage or opts.mount_path).rstrip("/")
    args.setdefault("embedding", {})["output_dir"] = f"{d}/embeddings"
    args.setdefault("profile", {})["snapshot_dir"] = f"{d}/profiles"
    t = args.setdefault("trainer", {})
    t["store_dir"], t["checkpoint_dir"] = f"{d}/policies", f"{d}/trainer"
    if any(g.gpus for g in opts.workers):
        if (args.get("embedding") or {}).get("device", "auto") == "auto":
            args.setdefault("embedding", {})["device"] = "cuda"  # the GPU group starts at zero: the embed job asks for it
        if t.get("num_learners", 0) >= 1 and "gpus_per_learner" not in t:
            t["gpus_per_learner"] = 1  # each remote PPO learner on a GPU worker
    args.setdefault("kafka", {}).pop("bootstrap_servers", None)  # from the Secret (STREAMREC_KAFKA_BOOTSTRAP)
    if (args.get("auth") or {}).get("api_keys"):
        raise RenderError("applications[].args.auth.api_keys: keys in the config would land in the manifest; "
                          "put them in the Secret's api-keys")
    for dep in app.get("deployments") or []:
        if dep.get("name") == "Ranker":
            scaling = dep.setdefault("autoscaling_config", {})
            scaling["min_replicas"], scaling["max_replicas"] = opts.ranker_replicas
    _validated(args)
    return yaml.safe_dump(out, sort_keys=False)


def _validated(args: dict):
    """The settings the pods will run with; the Secret's values stand in as placeholders."""
    env = {"STREAMREC_API_KEYS": "from-the-secret"}
    if ((args.get("kafka") or {}).get("security") or {}).get("protocol") == "SASL_SSL":
        env.update(STREAMREC_KAFKA_USERNAME="from-the-secret", STREAMREC_KAFKA_PASSWORD="from-the-secret")
    try:
        return settings_from_args(args, env=env)
    except ConfigError as e:
        raise RenderError(str(e)) from None


def _env(opts: RenderOptions, serve_env: dict[str, str], kafka_sasl: bool) -> list[dict]:
    def secret(name: str, key: str, optional: bool = False) -> dict:
        ref = {"name": opts.secret, "key": key}
        if optional:
            ref["optional"] = True
        return {"name": name, "valueFrom": {"secretKeyRef": ref}}

    env = [{"name": k, "value": v} for k, v in {**serve_env, **opts.extra_env}.items()]
    env += [secret("STREAMREC_KAFKA_BOOTSTRAP", "kafka-bootstrap"), secret("STREAMREC_API_KEYS", "api-keys"),
            secret("STREAMREC_ADMIN_KEYS", "admin-keys", optional=True),
            {"name": "STREAMREC_CONFIG", "value": CONFIG_IN_IMAGE}, {"name": "HF_HUB_OFFLINE", "value": "1"}]
    if kafka_sasl:
        env += [secret("STREAMREC_KAFKA_USERNAME", "kafka-username"), secret("STREAMREC_KAFKA_PASSWORD", "kafka-password")]
    if opts.storage:
        env += [secret("AWS_ACCESS_KEY_ID", "aws-access-key-id"), secret("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key"),
                secret("AWS_ENDPOINT_URL", "aws-endpoint-url", optional=True)]
    return env


def _pod(opts: RenderOptions, g: WorkerGroup, env: list[dict]) -> dict:
    limits = {"cpu": g.cpu, "memory": g.memory}
    if g.gpus:
        limits["nvidia.com/gpu"] = str(g.gpus)
    container = {"name": "ray-head" if g.name == "head" else "ray-worker", "image": opts.image, "env": env,
                 "resources": {"limits": limits, "requests": dict(limits)},
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False}}
    if opts.storage:  # artifacts in object storage: no shared volume
        return {"spec": {"containers": [container]}}
    container["volumeMounts"] = [{"name": "data", "mountPath": opts.mount_path}]
    return {"spec": {"containers": [container],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": opts.volume_claim}}]}}


def _cluster_spec(config_text: str, opts: RenderOptions) -> dict:
    import ray

    raw = yaml.safe_load(config_text)
    s = _validated(next(a for a in raw["applications"] if a.get("import_path") == APP_IMPORT_PATH).get("args") or {})
    env = _env(opts, ingress_env(s.serve.mode, wrapper=HAPROXY_IN_IMAGE), s.kafka.security.protocol == "SASL_SSL")
    spec = {
        "rayVersion": ray.__version__,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSeconds": opts.idle_timeout_s, "upscalingMode": "Default",
                              "resources": {"limits": {"cpu": "500m", "memory": "512Mi"},
                                            "requests": {"cpu": "500m", "memory": "512Mi"}}},
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            # num-cpus 0: no actor lands on the head; the dashboard and job server are reached through
            # the head Service inside the cluster, behind Ray's token authentication
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod(opts, opts.head, env),
        },
        "workerGroupSpecs": [
            {"groupName": g.name, "replicas": g.min_replicas, "minReplicas": g.min_replicas,
             "maxReplicas": g.max_replicas, "rayStartParams": {}, "template": _pod(opts, g, env)}
            for g in opts.workers],
    }
    if opts.redis_address:
        spec["gcsFaultToleranceOptions"] = {
            "redisAddress": opts.redis_address,
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": opts.secret, "key": opts.redis_secret_key}}}}
    return spec


def render_service(config_text: str, opts: RenderOptions) -> dict:
    """The RayService: the Serve app of ``config_text`` (production overlay) and the cluster it runs on."""
    _check(opts)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": opts.name, "labels": {"app.kubernetes.io/name": "streamrec"}},
        "spec": {
            "serveConfigV2": production_config(config_text, opts),
            "rayClusterConfig": _cluster_spec(config_text, opts),
        },
    }


def render_jobs(opts: RenderOptions, cluster: str) -> list[dict]:
    """One RayJob per loop job, submitted to the RayService's active cluster ``cluster``."""
    _check(opts)
    if not cluster:
        raise RenderError("cluster: name the RayService's active RayCluster "
                          "(kubectl get rayservice NAME -o jsonpath='{.status.activeServiceStatus.rayClusterName}')")
    return [{
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"{opts.name}-{job}", "labels": {"app.kubernetes.io/name": "streamrec"}},
        "spec": {
            "entrypoint": f"python -m {module} --config {CONFIG_IN_IMAGE}",
            "clusterSelector": {"ray.io/cluster": cluster},
            "submissionMode": "K8sJobMode",
            "submitterPodTemplate": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "submitter", "image": opts.image,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False}}]}},
            # embed finishes; stream and train run until stopped (kubectl delete rayjob)
            "backoffLimit": 2,
        },
    } for job, module in JOBS.items()]


def render_all(config_text: str, opts: RenderOptions, cluster: str) -> list[dict]:
    return [render_service(config_text, opts), *render_jobs(opts, cluster)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["service", "jobs"])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "ray_config.yaml"))
    ap.add_argument("--image", required=True, help="REGISTRY/streamrec:TAG")
    ap.add_argument("--name", default="streamrec")
    ap.add_argument("--secret", default="streamrec")
    ap.add_argument("--redis-address", default="streamrec-redis:6379", help="'' for no GCS fault tolerance")
    ap.add_argument("--volume-claim", default="streamrec-data")
    ap.add_argument("--storage", default=None, help="s3://bucket/prefix for the artifacts instead of the volume")
    ap.add_argument("--cluster", default="", help="jobs: the RayService's active RayCluster")
    args = ap.parse_args(argv)
    opts = RenderOptions(image=args.image, name=args.name, secret=args.secret, redis_address=args.redis_address or None,
                         volume_claim=args.volume_claim, storage=args.storage)
    try:
        docs = ([render_service(Path(args.config).read_text(), opts)] if args.what == "service"
                else render_jobs(opts, args.cluster))
    except RenderError as e:
        print(f"render error: {e}", file=sys.stderr)
        return 2
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
