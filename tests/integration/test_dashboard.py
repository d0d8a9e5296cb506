"""The dashboard page against the real local store, through Streamlit's AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import dashboards
from relmon import db, get_settings
from streams import repository

pytestmark = pytest.mark.integration
APP = str(Path(dashboards.__file__).parent / "app.py")


@pytest.fixture
def dashboard_env(settings, monkeypatch):
    db.migrate(settings)
    monkeypatch.setenv("RELMON_CLICKHOUSE_PORT", str(settings.clickhouse.port))
    monkeypatch.setenv("RELMON_CLICKHOUSE_DATABASE", settings.clickhouse.database)
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield settings
    get_settings.cache_clear()


def test_empty_store_says_it_waits(dashboard_env):
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert any("waiting for traffic" in info.value for info in at.info)


def test_rates_and_bad_cases_are_shown(dashboard_env, scored_rows):
    client = db.connect(dashboard_env)
    repository.insert_scored(client, scored_rows(n_good=30, n_bad=10))
    client.close()
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["sampled impressions"] == "40"
    assert metrics["flagged for review"] == "10"
    assert metrics["flagged rate over the range"] == "25.0%"
    # the rate shown, the expected bad share: the mean P(bad), 1 - score, of 30 rows at 0.1
    # and 10 at 0.9 (the flagged rate is 25%)
    assert metrics["expected bad share over the range"] == "30.0%"
    assert metrics["latest minute"] == "30.0%"
    headers = [h.value for h in at.subheader]
    assert "Latest low-score cases" in headers
    bad_table = at.dataframe[-1].value
    assert len(bad_table) == 10 and set(bad_table["title"]) == {"Shag Rug"}
