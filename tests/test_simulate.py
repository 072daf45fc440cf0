"""The simulator writes rows like the pipeline: deterministic, upserted, in the documented format."""

from __future__ import annotations

import psycopg

from serialmon.quality import parse_quality
from serialmon.simulate import DEMO_SCENARIO, SimulationConfig, generate_model, run_simulation


def test_same_seed_same_models():
    config = SimulationConfig(count=50, seed=7)
    first = [generate_model(config, index) for index in range(50)]
    second = [generate_model(config, index) for index in range(50)]
    assert [m.row for m in first] == [m.row for m in second]
    other = [generate_model(SimulationConfig(count=50, seed=8), index) for index in range(50)]
    assert [m.row for m in first] != [m.row for m in other]


def test_generated_quality_matches_parser():
    config = SimulationConfig(count=300, seed=3)
    known = 0
    for index in range(300):
        model = generate_model(config, index)
        parsed = parse_quality(model.row["serialized_content"])
        if parsed.known and parsed.source == "serialization_quality":
            known += 1
            assert parsed.element_coverage == model.element_coverage or model.status != "success"
    assert known > 200


def test_demo_scenario_raises_failures_in_burst():
    config = SimulationConfig(count=1000, seed=1, scenario=DEMO_SCENARIO)
    burst = [generate_model(config, index) for index in range(400, 480)]
    calm = [generate_model(config, index) for index in range(0, 300)]
    burst_rate = sum(m.failed_attempt is not None for m in burst) / len(burst)
    calm_rate = sum(m.failed_attempt is not None for m in calm) / len(calm)
    assert burst_rate > 0.3
    assert calm_rate < 0.12


def test_run_writes_rows_deterministically(initialized, libpq_url):
    config = SimulationConfig(count=60, seed=5, workers=2, content_kb=2, record=False)
    result = run_simulation(config, initialized)
    assert result.rows_written == 60
    with psycopg.connect(libpq_url) as conn:
        count, digest = conn.execute(
            "SELECT count(*), md5(string_agg(serialized_content::text, '' ORDER BY model_name)) FROM serialized_models"
        ).fetchone()
        conn.execute("TRUNCATE serialized_models")
    assert count == 60
    run_simulation(SimulationConfig(count=60, seed=5, workers=1, content_kb=2, record=False), initialized)
    with psycopg.connect(libpq_url) as conn:
        again = conn.execute(
            "SELECT md5(string_agg(serialized_content::text, '' ORDER BY model_name)) FROM serialized_models"
        ).fetchone()[0]
    assert again == digest


def test_rerun_upserts_instead_of_duplicating(initialized, libpq_url):
    config = SimulationConfig(count=20, seed=2, content_kb=1, record=False)
    run_simulation(config, initialized)
    run_simulation(config, initialized)
    with psycopg.connect(libpq_url) as conn:
        assert conn.execute("SELECT count(*) FROM serialized_models").fetchone()[0] == 20


def test_invalid_config_names_field():
    import pytest

    with pytest.raises(ValueError, match="failure_rate must be between 0 and 1, got 1.5"):
        SimulationConfig(failure_rate=1.5)
