"""Fixtures of the operator's pure-module tests."""

from __future__ import annotations

import pytest

from ondeck_operator.api.operator_config import OperatorConfig


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig()
