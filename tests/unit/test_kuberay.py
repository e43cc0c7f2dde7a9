"""Every rendered KubeRay manifest validates against KubeRay's own CRD schemas, and bad render
options are refused naming the field."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from cluster.kuberay.render import JOBS, RenderError, RenderOptions, WorkerGroup, render_all, render_jobs, render_service

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT.parent / "shared" / "kuberay" / "crds"
CONFIG = (ROOT / "ray_config.yaml").read_text()
OPTS = RenderOptions(image="registry.example.com/streamrec:0.1.0")

pytestmark = pytest.mark.skipif(not CRDS.is_dir(), reason=f"KubeRay CRDs not found at {CRDS}")


@functools.cache
def _schema(kind: str) -> dict:
    for f in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
            return version["schema"]["openAPIV3Schema"]
    raise LookupError(kind)


def _validate(manifest: dict) -> None:
    jsonschema.validate(manifest, _schema(manifest["kind"]))


def test_every_rendered_manifest_validates_against_kuberays_crds():
    docs = render_all(CONFIG, OPTS, cluster="streamrec-raycluster-x7k2p")
    assert [d["kind"] for d in docs] == ["RayService", "RayJob", "RayJob", "RayJob"]
    for d in docs:
        _validate(d)
    throughput = CONFIG.replace("      auth:\n", "      serve:\n        mode: throughput\n      auth:\n", 1)
    _validate(render_service(throughput, OPTS))
    _validate(render_service(CONFIG, dataclasses.replace(OPTS, redis_address=None)))
    sasl = CONFIG.replace("        partitions: 3\n", "        partitions: 3\n        security: {protocol: SASL_SSL, "
                          "sasl_mechanism: SCRAM-SHA-512}\n", 1)
    assert sasl != CONFIG
    m = render_service(sasl, OPTS)
    _validate(m)
    env = {e["name"] for e in m["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"STREAMREC_KAFKA_USERNAME", "STREAMREC_KAFKA_PASSWORD"} <= env


def test_the_validator_catches_a_malformed_manifest():
    bad = render_service(CONFIG, OPTS)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        _validate(bad)
    bad = render_service(CONFIG, OPTS)
    bad["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "open"
    with pytest.raises(jsonschema.ValidationError, match="'open' is not one of"):
        _validate(bad)


def test_the_service_holds_the_production_cluster():
    from ray.serve.schema import ServeDeploySchema

    from streamrec.config import settings_from_args

    m = render_service(CONFIG, OPTS)
    cluster = m["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"} and cluster["enableInTreeAutoscaling"]
    assert cluster["gcsFaultToleranceOptions"] == {"redisAddress": "streamrec-redis:6379", "redisPassword": {
        "valueFrom": {"secretKeyRef": {"name": "streamrec", "key": "redis-password"}}}}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 and gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for pod in [cluster["headGroupSpec"]["template"], *(g["template"] for g in groups.values())]:
        c = pod["spec"]["containers"][0]
        assert c["image"] == OPTS.image and c["securityContext"]["runAsNonRoot"]
        assert {e["name"] for e in c["env"]} >= {"STREAMREC_API_KEYS", "STREAMREC_KAFKA_BOOTSTRAP"}
        assert all("value" not in e for e in c["env"] if e["name"] == "STREAMREC_API_KEYS")  # from the Secret only
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "streamrec-data"
    serve = yaml.safe_load(m["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve)
    assert serve["http_options"]["host"] == "0.0.0.0"
    args = serve["applications"][0]["args"]
    s = settings_from_args(args, env={"STREAMREC_API_KEYS": "a-key-of-16-chars"})
    assert s.trainer.store_dir == "/data/streamrec/policies" and s.embedding.output_dir == "/data/streamrec/embeddings"
    assert s.embedding.device == "cuda" and s.encoder.device == "auto"  # the GPU group is at zero until the embedding job asks for a GPU
    ranker = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "Ranker")
    assert (ranker["autoscaling_config"]["min_replicas"], ranker["autoscaling_config"]["max_replicas"]) == (2, 16)


def test_object_storage_replaces_the_volume():
    from streamrec.config import settings_from_args

    m = render_service(CONFIG, dataclasses.replace(OPTS, storage="s3://streamrec-prod/loop"))
    _validate(m)
    cluster = m["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
        c = pod["spec"]["containers"][0]
        assert "volumes" not in pod["spec"] and "volumeMounts" not in c
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
        assert refs["AWS_ACCESS_KEY_ID"]["key"] == "aws-access-key-id"
        assert refs["AWS_ENDPOINT_URL"].get("optional") is True
    args = yaml.safe_load(m["spec"]["serveConfigV2"])["applications"][0]["args"]
    s = settings_from_args(args, env={"STREAMREC_API_KEYS": "a-key-of-16-chars"})
    assert (s.embedding.output_dir, s.trainer.store_dir, s.trainer.checkpoint_dir, s.profile.snapshot_dir) == (
        "s3://streamrec-prod/loop/embeddings", "s3://streamrec-prod/loop/policies",
        "s3://streamrec-prod/loop/trainer", "s3://streamrec-prod/loop/profiles")


def test_remote_ppo_learners_ask_for_the_gpu_group():
    from streamrec.config import settings_from_args

    def learner_settings(config_text: str):
        args = yaml.safe_load(render_service(config_text, OPTS)["spec"]["serveConfigV2"])["applications"][0]["args"]
        return settings_from_args(args, env={"STREAMREC_API_KEYS": "a-key-of-16-chars"}).trainer

    two = CONFIG.replace("      trainer:\n", "      trainer:\n        num_learners: 2\n", 1)
    assert two != CONFIG
    assert (learner_settings(two).num_learners, learner_settings(two).gpus_per_learner) == (2, 1.0)
    assert learner_settings(CONFIG).gpus_per_learner == 0.0  # the learner in the trainer's process: no GPU asked


def test_the_jobs_run_on_the_services_cluster():
    jobs = render_jobs(OPTS, cluster="streamrec-raycluster-x7k2p")
    assert [j["metadata"]["name"] for j in jobs] == [f"streamrec-{k}" for k in JOBS]
    for j, module in zip(jobs, JOBS.values()):
        assert j["spec"]["clusterSelector"] == {"ray.io/cluster": "streamrec-raycluster-x7k2p"}
        assert j["spec"]["entrypoint"].startswith(f"python -m {module} --config ")
        assert "rayClusterSpec" not in j["spec"]




@pytest.mark.parametrize("change, call, message", [
    ({"image": ""}, "service", "image: give the streamrec image"),
    ({"image": "registry.example.com/streamrec"}, "service", "has no tag; pin one"),
    ({"workers": (WorkerGroup("gpu", "8", "48Gi", 0, 4, gpus=0),)}, "service",
     "workers.gpu: a GPU group needs gpus >= 1"),
    ({"workers": (WorkerGroup("cpu", "8", "32Gi", 3, 2),)}, "service", "workers.cpu: replicas must satisfy"),
    ({"ranker_replicas": (0, 4)}, "service", "ranker_replicas: need 1 <= min <= max"),
    ({"secret": ""}, "service", "secret: the API keys of a non-loopback HTTP host come from a Secret"),
    ({}, "jobs", "cluster: name the RayService's active RayCluster"),
    ({"storage": "/mnt/objects"}, "service", "storage: '/mnt/objects' is not a URI"),
])
def test_bad_render_options_are_refused_naming_the_field(change, call, message):
    opts = dataclasses.replace(OPTS, **change)
    with pytest.raises(RenderError, match=message.replace("(", r"\(")):
        render_service(CONFIG, opts) if call == "service" else render_jobs(opts, cluster="")


def test_keys_written_into_the_config_are_refused():
    with_keys = CONFIG.replace("api_keys: []", "api_keys: [a-key-of-16-chars]")
    assert with_keys != CONFIG
    with pytest.raises(RenderError, match=r"args.auth.api_keys: keys in the config would land in the manifest"):
        render_service(with_keys, OPTS)
