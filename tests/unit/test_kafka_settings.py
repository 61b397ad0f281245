"""WIDELOG_KAFKA_CONFIG: extra librdkafka properties, never ones widelog owns, never a secret."""

import json

import pytest

from widelog.config import SettingsError, load_settings

SASL = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "u"}


def test_security_properties_and_the_masked_password_reach_the_client_config(monkeypatch):
    monkeypatch.setenv("WIDELOG_KAFKA_CONFIG", json.dumps(SASL))
    monkeypatch.setenv("WIDELOG_KAFKA_SASL_PASSWORD", "s3cret-value")
    settings = load_settings()
    assert {**SASL, "sasl.password": "s3cret-value"} == settings.kafka_client_config()
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings.model_dump())


@pytest.mark.parametrize("owned", ["enable.idempotence", "acks", "enable.auto.commit", "group.id"])
def test_a_property_widelog_owns_is_refused_by_name(monkeypatch, owned):
    monkeypatch.setenv("WIDELOG_KAFKA_CONFIG", json.dumps({**SASL, owned: "x"}))
    with pytest.raises(SettingsError, match=f"WIDELOG_KAFKA_CONFIG: .*sets {owned}, which widelog"):
        load_settings()


def test_a_password_in_the_unmasked_json_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("WIDELOG_KAFKA_CONFIG", json.dumps({**SASL, "sasl.password": "hunter2"}))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "WIDELOG_KAFKA_SASL_PASSWORD" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_config_that_is_not_json_is_a_settings_error(monkeypatch):
    monkeypatch.setenv("WIDELOG_KAFKA_CONFIG", "security.protocol=SASL_PLAINTEXT")
    with pytest.raises(SettingsError, match=r"kafka_config.*must be JSON"):
        load_settings()
