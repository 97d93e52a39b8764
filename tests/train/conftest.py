"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

from randsparse.train import TrainConfig
from tests.train._runs import tiny_config


@pytest.fixture
def tiny() -> TrainConfig:
    """The default tiny run config."""
    return tiny_config()
