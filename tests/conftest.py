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


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)
