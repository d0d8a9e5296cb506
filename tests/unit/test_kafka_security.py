"""Kafka security settings (RELMON_KAFKA_SECURITY_PROTOCOL, _SSL_*, _SASL_*): what each client
library of relmon is given, and the configuration errors that stop start-up.

TLS is tested end to end in ``tests/integration/test_kafka_tls.py``; SASL only here, as the
embedded broker keeps no users.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from relmon.errors import ConfigError
from relmon.kafka import kafka_connection, librdkafka_config
from relmon.settings import load_settings
from streams.app import broker_credentials

TLS = Path(__file__).parents[1] / "integration" / "tls"
CA = str(TLS / "broker.pem")


def test_plaintext_by_default_gives_no_tls_and_no_sasl() -> None:
    s = load_settings()
    assert kafka_connection(s) == {
        "bootstrap_servers": s.kafka.servers,
        "security_protocol": "PLAINTEXT",
    }
    assert librdkafka_config(s)["security.protocol"] == "plaintext"
    assert broker_credentials(s) is None


def test_tls_gives_every_client_the_authority_and_checks_host_names() -> None:
    s = load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=CA)
    conn = kafka_connection(s)
    context = conn["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert conn["security_protocol"] == "SSL" and "sasl_mechanism" not in conn
    rd = librdkafka_config(s)
    assert rd["security.protocol"] == "ssl" and rd["ssl.ca.location"] == CA
    creds = broker_credentials(s)
    assert isinstance(creds, SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"


def test_sasl_over_tls_gives_every_client_the_user_and_keeps_the_password_secret() -> None:
    s = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=CA,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="relmon",
        kafka_sasl_password="s3cret-pw",
    )
    conn = kafka_connection(s)
    assert conn["security_protocol"] == "SASL_SSL"
    assert conn["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (conn["sasl_plain_username"], conn["sasl_plain_password"]) == ("relmon", "s3cret-pw")
    assert isinstance(conn["ssl_context"], ssl.SSLContext)
    rd = librdkafka_config(s, group="g")
    assert rd["security.protocol"] == "sasl_ssl" and rd["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (rd["sasl.username"], rd["sasl.password"]) == ("relmon", "s3cret-pw")
    auth = credentials_to_aiokafka_auth(broker_credentials(s))
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("relmon", "s3cret-pw")
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s.kafka)
    # without TLS: SASL in plain TCP, no context anywhere
    plain = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="relmon",
        kafka_sasl_password="pw",
    )
    assert "ssl_context" not in kafka_connection(plain)
    creds = broker_credentials(plain)
    assert isinstance(creds, SASLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SASL_PLAINTEXT"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs RELMON_KAFKA_SASL_USERNAME"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "RELMON_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_ssl_cafile": CA}, "set it to SSL or SASL_SSL"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/no/such/ca.pem"},
            "RELMON_KAFKA_SSL_CAFILE=/no/such/ca.pem is not a file",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": CA},
            "go together",
        ),
        ({"kafka_security_protocol": "TLS"}, "RELMON_KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_a_security_setting_that_cannot_work_stops_start_up_saying_what_to_fix(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**overrides)
