"""The tuned-budget file and the tuning config: round trip, validation, clear errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from textserve.core.batcher import BatchBudget
from textserve.core.config import ConfigError
from textserve.settings import load_settings
from textserve.tuning.config import TuningConfig
from textserve.tuning.result import FORMAT, Provenance, TunedBudgetError, TuningPoint, TuningResult


def sample(source: str = "autotune") -> TuningResult:
    return TuningResult(
        budget=BatchBudget(max_batch_size=32, max_batch_tokens=512, source=source),
        predicted_texts_per_second=130.0,
        worst_batch_latency_ms=40.0,
        latency_ceiling_ms=100.0,
        mix_text_tokens=[16, 64, 256],
        concurrency=64,
        provenance=Provenance(
            model="all-MiniLM-L6-v2",
            revision="abc",
            backend="onnxruntime",
            device="cpu",
            hardware="cpu: test x2",
            created="2026-01-01T00:00:00+00:00",
            measure_seconds=31.5,
        ),
        curve=[TuningPoint(16, 1, 16, 1.5, 666.7, 30), TuningPoint(16, 4, 64, 4.5, 888.9, 30)],
        fixed_sizes=[(1, 100.0), (4, 120.0)],
    )


# sample() as `textserve tune --output` wrote it before the budget became a BatchBudget.
V1_FILE = {
    "format": "textserve.tuned-budget/v1",
    "max_batch_size": 32,
    "max_batch_tokens": 512,
    "predicted_texts_per_second": 130.0,
    "worst_batch_latency_ms": 40.0,
    "latency_ceiling_ms": 100.0,
    "mix_text_tokens": [16, 64, 256],
    "concurrency": 64,
    "model": "all-MiniLM-L6-v2",
    "revision": "abc",
    "backend": "onnxruntime",
    "device": "cpu",
    "hardware": "cpu: test x2",
    "created": "2026-01-01T00:00:00+00:00",
    "measure_seconds": 31.5,
    "curve": [
        {
            "text_tokens": 16,
            "batch_size": 1,
            "batch_tokens": 16,
            "batch_latency_ms": 1.5,
            "texts_per_second": 666.7,
            "repeats": 30,
        },
        {
            "text_tokens": 16,
            "batch_size": 4,
            "batch_tokens": 64,
            "batch_latency_ms": 4.5,
            "texts_per_second": 888.9,
            "repeats": 30,
        },
    ],
    "fixed_sizes": [
        {"max_batch_size": 1, "texts_per_second": 100.0},
        {"max_batch_size": 4, "texts_per_second": 120.0},
    ],
}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "tuned.json"
    sample().save(path)
    assert json.loads(path.read_text())["format"] == FORMAT
    assert TuningResult.load(path) == sample(source=f"tuned:{path}")
    assert not list(path.parent.glob(".*tmp"))  # written atomically, nothing left behind


def test_the_file_format_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(V1_FILE, indent=2) + "\n")
    assert TuningResult.load(path) == sample(source=f"tuned:{path}")
    written = tmp_path / "again.json"
    sample().save(written)
    assert written.read_text() == path.read_text()  # same keys, same order, same bytes


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "Expecting value"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": "something-else"}', "format"),
        (json.dumps({**sample().to_json(), "max_batch_tokens": 0}), "max_batch_tokens=0"),
        (
            json.dumps({k: v for k, v in sample().to_json().items() if k != "max_batch_size"}),
            "max_batch_size",
        ),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(content)
    with pytest.raises(TunedBudgetError) as caught:
        TuningResult.load(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_mismatch_names_what_differs() -> None:
    measured = sample().provenance
    assert measured.mismatch("all-MiniLM-L6-v2", "abc", "onnxruntime", "cpu") is None
    reason = measured.mismatch("all-MiniLM-L6-v2", "abc", "onnxruntime", "cuda:0")
    assert reason is not None and "device" in reason and "cuda:0" in reason


def test_tuning_config_defaults_and_limits() -> None:
    config = TuningConfig()
    assert config.latency_ceiling_ms == 100.0 and config.batch_sizes == [1, 2, 4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match=r"tuning\.batch_sizes"):
        TuningConfig(batch_sizes=[0, 8])
    with pytest.raises(ValueError, match=r"tuning\.batch_sizes must not be empty"):
        TuningConfig(batch_sizes=[])


def test_tuning_is_configured_from_yaml_and_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("embedding:\n  autotune: true\n  tuning:\n    latency_ceiling_ms: 50\n")
    settings = load_settings(config_file, environ={"TEXTSERVE_EMBEDDING__TUNING__TEXT_TOKENS": "[16, 128]"})
    assert settings.embedding.autotune
    assert settings.embedding.tuning.latency_ceiling_ms == 50
    assert settings.embedding.tuning.text_tokens == [16, 128]
    with pytest.raises(ConfigError, match=r"embedding\.tuning\.seconds"):
        load_settings(environ={"TEXTSERVE_EMBEDDING__TUNING__SECONDS": "0"})


def test_precision_is_recorded_and_a_file_without_it_reads_as_fp32(tmp_path: Path) -> None:
    int8 = replace(sample(), provenance=replace(sample().provenance, precision="int8"))
    path = tmp_path / "tuned.json"
    int8.save(path)
    assert json.loads(path.read_text())["precision"] == "int8"
    assert TuningResult.load(path) == int8.with_source(f"tuned:{path}")
    measured = TuningResult.load(path).provenance
    assert measured.mismatch("all-MiniLM-L6-v2", "abc", "onnxruntime", "cpu", "int8") is None
    assert measured.mismatch("all-MiniLM-L6-v2", "abc", "onnxruntime", "cpu") == "precision 'int8' != 'fp32'"
    # V1_FILE has no precision key: measured before precision was a choice, so fp32.
    older = sample().provenance
    assert older.precision is None
    assert older.mismatch("all-MiniLM-L6-v2", "abc", "onnxruntime", "cpu", "fp32") is None
    reason = older.mismatch("all-MiniLM-L6-v2", "abc", "onnxruntime", "cpu", "int8")
    assert reason == "precision 'fp32' != 'int8'"
