"""kafka.security: validated once, mapped once per client library, and what each client receives."""

from __future__ import annotations

import pytest

from streamrec.config import ConfigError, settings_from_args
from streamrec.eventbus import KafkaEventSink, kafka_python_security, librdkafka_security


def _security(env=None, **security):
    return settings_from_args({"kafka": {"security": security}}, env=env or {}).kafka.security


@pytest.fixture
def ca(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def test_plaintext_adds_nothing_to_any_client():
    s = _security()
    assert librdkafka_security(s) == {} and kafka_python_security(s) == {} and librdkafka_security(None) == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_per_client(mechanism, ca):
    env = {"STREAMREC_KAFKA_USERNAME": "svc", "STREAMREC_KAFKA_PASSWORD": "s3cret"}
    s = _security(env, protocol="SASL_SSL", sasl_mechanism=mechanism, ca_file=ca)
    assert librdkafka_security(s) == {"security.protocol": "SASL_SSL", "sasl.mechanism": mechanism,
                                      "sasl.username": "svc", "sasl.password": "s3cret", "ssl.ca.location": ca}
    assert kafka_python_security(s) == {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
                                        "sasl_plain_username": "svc", "sasl_plain_password": "s3cret",
                                        "ssl_cafile": ca}
    assert "s3cret" not in str(settings_from_args({"kafka": {"security": {
        "protocol": "SASL_SSL", "sasl_mechanism": mechanism}}}, env=env).public_dict())  # masked


def test_ssl_per_client(ca):
    s = _security(protocol="SSL", ca_file=ca)
    assert librdkafka_security(s) == {"security.protocol": "SSL", "ssl.ca.location": ca}
    assert kafka_python_security(s) == {"security_protocol": "SSL", "ssl_cafile": ca}
    assert librdkafka_security(_security(protocol="SSL")) == {"security.protocol": "SSL"}  # the system's CAs


def test_the_kafka_python_sink_is_built_with_the_mapping(ca):
    s = _security(protocol="SSL", ca_file=ca)
    made = {}
    sink = KafkaEventSink("127.0.0.1:1", security=s, producer_factory=lambda: made.setdefault("p", None))
    try:
        assert {k: v for k, v in sink.config.items() if k in ("security_protocol", "ssl_cafile")} == \
            {"security_protocol": "SSL", "ssl_cafile": ca}
    finally:
        sink.close(timeout_s=1)


@pytest.mark.parametrize("security, env, message", [
    ({"protocol": "SASL_SSL"}, {}, "protocol SASL_SSL needs sasl_mechanism, username, password"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, {"STREAMREC_KAFKA_USERNAME": "u"},
     "protocol SASL_SSL needs password"),
    ({"protocol": "SSL", "sasl_mechanism": "PLAIN"}, {}, "sasl_mechanism, username and password need protocol SASL_SSL"),
    ({"protocol": "PLAINTEXT"}, {"STREAMREC_KAFKA_PASSWORD": "p"}, "need protocol SASL_SSL, not PLAINTEXT"),
    ({"ca_file": "/etc/ca.pem"}, {}, "ca_file needs protocol SSL or SASL_SSL"),
    ({"protocol": "TLS"}, {}, "args.kafka.security.protocol: Input should be 'PLAINTEXT', 'SSL' or 'SASL_SSL'"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, {},
     "args.kafka.security.sasl_mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
])
def test_bad_security_settings_name_the_key(security, env, message):
    with pytest.raises(ConfigError, match="args.kafka.security") as e:
        settings_from_args({"kafka": {"security": security}}, env=env)
    assert message in str(e.value)


def test_a_missing_ca_file_is_named_when_a_client_is_built(tmp_path):
    s = _security(protocol="SSL", ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match=r"kafka.security.ca_file: .*nope.pem is not a readable file on this node"):
        librdkafka_security(s)
