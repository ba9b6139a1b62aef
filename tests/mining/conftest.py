"""Fixtures of the mining tests (the helpers live in mining_fixtures.py)."""

from __future__ import annotations

import pytest

from mining_fixtures import make_tiny_bi_encoder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return make_tiny_bi_encoder(tmp_path_factory.mktemp("tiny-bi-encoder"))
