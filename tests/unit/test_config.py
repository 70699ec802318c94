"""Configuration: YAML < environment < overrides, validated at start with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from textserve.core.config import ConfigError
from textserve.settings import dump_settings, load_settings


def test_defaults_are_valid_and_offline() -> None:
    settings = load_settings(environ={})
    assert settings.embedding.server.port == 50052
    assert Path(settings.embedding.model.path, "config.json").is_file()
    assert settings.cache.backend == "memory"


def test_yaml_then_env_precedence(tmp_path: Path) -> None:
    config = tmp_path / "textserve.yaml"
    config.write_text("embedding:\n  batcher:\n    max_batch_size: 8\n    max_queue_size: 99\n")
    settings = load_settings(
        config, environ={"TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE": "16", "OTHER": "x"}
    )
    assert settings.embedding.batcher.max_batch_size == 16  # env wins
    assert settings.embedding.batcher.max_queue_size == 99  # from YAML
    via_env_file = load_settings(environ={"TEXTSERVE_CONFIG_FILE": str(config)})
    assert via_env_file.embedding.batcher.max_batch_size == 8


def test_env_lists_parse_as_yaml() -> None:
    settings = load_settings(environ={"TEXTSERVE_EMBEDDING__SERVER__AUTH__TOKENS": '["a","b"]'})
    assert [t.get_secret_value() for t in settings.embedding.server.auth.tokens] == ["a", "b"]


def test_errors_name_every_field_and_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            environ={
                "TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE": "0",
                "TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZ": "3",
                "TEXTSERVE_CACHE__BACKEND": "memcached",
            }
        )
    message = str(caught.value)
    assert "embedding.batcher.max_batch_size" in message and "(got '0')" in message
    assert "embedding.batcher.max_batch_siz" in message and "Extra inputs" in message
    assert "cache.backend" in message and "memcached" in message


def test_cross_field_rule_names_both_fields() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            environ={
                "TEXTSERVE_GENERATION__MAX_NEW_TOKENS_DEFAULT": "500",
                "TEXTSERVE_GENERATION__MAX_NEW_TOKENS_LIMIT": "100",
            }
        )
    assert "max_new_tokens_default=500" in str(caught.value)
    assert "max_new_tokens_limit=100" in str(caught.value)


def test_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad, environ={})


def test_the_admission_bound_defaults_to_twice_each_services_queue() -> None:
    settings = load_settings(
        None,
        environ={
            "TEXTSERVE_EMBEDDING__BATCHER__MAX_QUEUE_SIZE": "100",
            "TEXTSERVE_GENERATION__MAX_WAITING_SEQUENCES": "50",
            "TEXTSERVE_CLASSIFIER__SERVER__MAX_IN_FLIGHT_REQUESTS": "7",  # set: kept as given
        },
    )
    assert settings.embedding.server.max_in_flight_requests == 200
    assert settings.generation.server.max_in_flight_requests == 2 * (50 + 32)
    assert settings.classifier.server.max_in_flight_requests == 7
    assert settings.tokenizer.server.max_in_flight_requests == 4096  # no queue: the fixed default
    defaults = load_settings(None, environ={})
    assert defaults.embedding.server.max_in_flight_requests == 2 * 2048  # as before the derivation
    assert dump_settings(defaults)["embedding"]["server"]["max_in_flight_requests"] == 4096
