"""Shared fixtures: one embedded broker and (lazily) one local Ray per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real Tansu broker over TCP on a free loopback port, stopped at the end of the session."""
    from cluster.broker import start_embedded_broker, stop_broker

    handle = start_embedded_broker(log_dir=tmp_path_factory.mktemp("broker"))
    yield handle
    stop_broker(handle)


@pytest.fixture
def topic(broker):
    """A fresh single-use topic name (3 partitions) on the session broker."""
    from cluster.broker import ensure_topics

    name = f"t.{uuid.uuid4().hex[:10]}"
    ensure_topics(broker.bootstrap, {name: 3})
    return name


_session: dict[str, str] = {}


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for the whole session (dashboard + job server on 127.0.0.1), shut down at the end."""
    import socket
    import time

    import ray

    from cluster.broker import free_port

    # A head started just before (the CLI tests' `streamrec up`) may leave its dashboard agent on
    # Ray's fixed agent port for a while; a head that cannot bind it has no job server agent.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            try:
                sock.bind(("", 52365))
                break
            except OSError:
                time.sleep(1)
    ctx = ray.init(
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        _node_ip_address="127.0.0.1",
        object_store_memory=512 * 1024 * 1024,
        namespace="streamrec-tests",
        log_to_driver=False,
    )
    _session["dashboard"] = f"http://{ctx.dashboard_url}"
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_dashboard(ray_session) -> str:
    """The session Ray's dashboard (job server) URL."""
    return _session["dashboard"]


class IndependentClient:
    """A Kafka client that shares no code with kafka-python: kcat (librdkafka) when it can talk to
    the broker, else Tansu's own Rust client (`tansu cat`). JSON values only."""

    def __init__(self, bootstrap: str):
        from cluster.broker import tansu_binary

        self.bootstrap = bootstrap
        self.kcat = shutil.which("kcat") or shutil.which("kafkacat")
        self.why_not_kcat = None
        if not self.kcat:
            self.why_not_kcat = "kcat is not installed"
        else:
            probe = subprocess.run([self.kcat, "-L", "-b", bootstrap, "-m", "5"], capture_output=True, text=True, timeout=30)
            if probe.returncode != 0:
                # seen with librdkafka 2.0.2 (Debian 12's kcat) against Tansu 0.6: its ApiVersions v3
                # response does not parse ("Read underflow"); a real Kafka cluster is fine.
                self.why_not_kcat = "kcat cannot talk to this broker: " + probe.stderr.strip().splitlines()[-1]
                self.kcat = None
        self.tansu = str(tansu_binary())
        self.name = "kcat" if self.kcat else "tansu cat"

    def write(self, topic: str, records: list[tuple[str, dict]]) -> None:
        import json

        if self.kcat:
            lines = "".join(f"{k}\t{json.dumps(v)}\n" for k, v in records)
            out = subprocess.run([self.kcat, "-P", "-b", self.bootstrap, "-t", topic, "-K", "\t"],
                                 input=lines, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        else:
            # tansu cat writes one partition; key is JSON-encoded by it
            lines = "".join(json.dumps({"key": k, "value": v}) + "\n" for k, v in records)
            out = subprocess.run([self.tansu, "cat", "produce", topic, "--broker", f"tcp://{self.bootstrap}"],
                                 input=lines, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr

    def read(self, topic: str, partitions: int) -> list[dict]:
        import json

        if self.kcat:
            out = subprocess.run([self.kcat, "-C", "-b", self.bootstrap, "-t", topic, "-e", "-q", "-f", "%s\n"],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        values = []
        for p in range(partitions):
            out = subprocess.run([self.tansu, "cat", "consume", topic, "--broker", f"tcp://{self.bootstrap}",
                                  "--partition", str(p), "--max-wait-time-ms", "500"],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            for line in out.stdout.splitlines():
                if line.strip():
                    values.extend(r["value"] for r in json.loads(line))
        return values


@pytest.fixture(scope="session")
def independent_client(broker):
    client = IndependentClient(broker.bootstrap)
    if client.why_not_kcat:
        print(f"\n[independent client] using tansu cat: {client.why_not_kcat}")
    return client


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol server (moto's standalone server, over HTTP on a free loopback port):
    ``{"endpoint", "env"}``, where ``env`` is what a client process needs to reach it."""
    import sys
    import time
    import urllib.request

    from cluster.broker import free_port

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, f"moto_server did not start on {endpoint}"
            time.sleep(0.3)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "streamrec-test", "AWS_SECRET_ACCESS_KEY": "streamrec-test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    yield {"endpoint": endpoint, "env": env}
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh bucket on the session's S3 server, with this process's AWS environment pointing at
    it; returns ``s3://<bucket>``."""
    import boto3

    for k, v in s3_server["env"].items():
        monkeypatch.setenv(k, v)
    name = f"streamrec-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint"]).create_bucket(Bucket=name)
    return f"s3://{name}"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)
