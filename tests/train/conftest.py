"""Fixtures for the train tests: tiny random models and small data sets, made once per session."""

from __future__ import annotations

import pytest

from train_fixtures import make_debian_sets, make_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    return make_tiny_models(str(tmp_path_factory.mktemp("tiny-models")))


@pytest.fixture(scope="session")
def tiny_bi_encoder(tiny_models) -> str:
    return tiny_models[0]


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_models) -> str:
    return tiny_models[1]


@pytest.fixture(scope="session")
def debian_sets(tmp_path_factory) -> dict[str, str]:
    return make_debian_sets(str(tmp_path_factory.mktemp("debian-sets")))
