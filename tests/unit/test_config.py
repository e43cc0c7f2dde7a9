"""ray_config.yaml is a valid Serve config and valid streamrec settings; bad values name their key."""

from pathlib import Path

import pytest
import yaml

from streamrec.config import ConfigError, load_settings, settings_from_args

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "ray_config.yaml"


def test_repo_config_passes_rays_schema_and_ours():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(raw)  # what `serve deploy` checks
    s = load_settings(CONFIG, env={})
    assert s.kafka.bootstrap_servers is None  # embedded broker by default
    assert s.kafka.topics.impressions == "streamrec.impressions"
    assert s.policy.slate_size == 10


def test_defaults_without_args():
    s = settings_from_args(None, env={})
    assert s.kafka.partitions == 3 and s.catalog.source == "synthetic"


@pytest.mark.parametrize(
    "args, message",
    [
        ({"kafka": {"partitions": 0}}, "args.kafka.partitions: Input should be greater than or equal to 1"),
        ({"kafka": {"partitons": 3}}, "args.kafka.partitons: unknown key"),
        ({"kafka": {"bootstrap_servers": "localhost"}},
         "args.kafka.bootstrap_servers: expected host:port[,host:port...], got 'localhost'"),
        ({"kafka": {"topics": {"dlq": "bad topic!"}}},
         "args.kafka.topics.dlq: a Kafka topic name is 1-249 characters of letters, digits, '.', '_' or '-'"),
        ({"kafka": {"topics": {"dlq": "streamrec.feedback"}}},
         "args.kafka.topics: impressions, feedback, dlq and samples must be four different topics"),
        ({"policy": {"slate_size": 101}}, "args.policy.slate_size: Input should be less than or equal to 100"),
        ({"policy": {"algorithm": "bandit"}},
         "args.policy.algorithm: Input should be 'ppo', 'linucb', 'thompson', 'egreedy', 'popularity' or 'random'"),
        ({"policy": {"epsilon": "a lot"}}, "args.policy.epsilon: Input should be a valid number, unable to parse string as a number"),
        ({"catalog": {"source": "movielens"}}, "args.catalog: path is required when source is 'movielens'"),
        ({"ingest": {"parallelism": 3, "max_parallelism": 2}}, "args.ingest: max_parallelism (2) is below parallelism (3)"),
        ({"ingest": {"session_timeout_ms": 45000}},
         "args.ingest.session_timeout_ms: Input should be less than or equal to 30000"),
        ({"auth": {"api_keys": ["short"]}}, "args.auth.api_keys: every API key needs at least 8 characters"),
        ({"encoder": {"device": "tpu"}}, "args.encoder.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ("nope", "args: expected a mapping of settings, got str"),
    ],
)
def test_bad_values_name_the_key_and_the_reason(args, message):
    with pytest.raises(ConfigError) as e:
        settings_from_args(args, env={})
    assert str(e.value) == message


def test_two_errors_are_both_reported():
    with pytest.raises(ConfigError) as e:
        settings_from_args({"kafka": {"partitions": -1}, "policy": {"slate_size": 0}}, env={})
    assert "args.kafka.partitions" in str(e.value) and "args.policy.slate_size" in str(e.value)


def test_environment_overrides_endpoints_and_secrets():
    s = settings_from_args({}, env={"STREAMREC_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
                                    "STREAMREC_API_KEYS": "key-one-123, key-two-456",
                                    "RAY_ADDRESS": "ray://head:10001"})
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert [k.get_secret_value() for k in s.auth.api_keys] == ["key-one-123", "key-two-456"]
    assert s.ray.address == "ray://head:10001"
    assert "key-one-123" not in str(s.public_dict())  # secrets never shown


def test_bad_environment_value_is_reported_with_its_key():
    with pytest.raises(ConfigError, match=r"args\.kafka\.bootstrap_servers: expected host:port"):
        settings_from_args({}, env={"STREAMREC_KAFKA_BOOTSTRAP": "no-port"})


def _write(tmp_path, raw) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return p


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(_write(tmp_path, "a: [1, 2"), env={})
    with pytest.raises(ConfigError, match="not a valid Ray Serve config"):
        load_settings(_write(tmp_path, {"applications": [{"name": "x"}]}), env={})
    with pytest.raises(ConfigError, match="no application with import_path 'serve.app:build_app'"):
        load_settings(_write(tmp_path, {"applications": [{"name": "x", "import_path": "a.b:c"}]}), env={})


def test_file_error_paths_point_into_the_application(tmp_path):
    raw = yaml.safe_load(CONFIG.read_text())
    raw["applications"][0]["args"]["kafka"]["partitions"] = 0
    with pytest.raises(ConfigError) as e:
        load_settings(_write(tmp_path, raw), env={})
    assert str(e.value) == "applications[0].args.kafka.partitions: Input should be greater than or equal to 1"


def test_build_app_validates_the_args_serve_passes():
    from ray.serve import Application

    from serve.app import build_app

    args = yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]
    assert isinstance(build_app(args), Application)
    with pytest.raises(ConfigError, match=r"args\.policy\.slate_size: Input should be less than or equal to 100"):
        build_app({"policy": {"slate_size": 1000}})


def test_a_job_that_talks_to_kafka_needs_a_broker_named(monkeypatch, capsys):
    from cluster.jobs import job_settings

    monkeypatch.delenv("STREAMREC_KAFKA_BOOTSTRAP", raising=False)
    assert job_settings(str(CONFIG)) is not None  # the embedding job needs no broker
    assert job_settings(str(CONFIG), kafka=True) is None
    assert "config error: kafka.bootstrap_servers (or STREAMREC_KAFKA_BOOTSTRAP) is required" in capsys.readouterr().err
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "kafka-0.kafka:9092")
    assert job_settings(str(CONFIG), kafka=True).kafka.bootstrap_servers == "kafka-0.kafka:9092"
