"""Fixtures for the language-model lane: the tiny LLaMA folder (tinyllm.py), built once
per session, and its fp32 / int4 artifacts converted once per session.

`ONDECK_TINYLLM_CACHE=DIR` keeps the folder and the artifact store in DIR across
sessions (the conversion is then a cache hit): for working on these tests only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm import tinyllm
from ondeck_server.convert import ConvertRequest, Quantize, convert
from ondeck_server.convert.run import Outcome

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinyllm.for_tests(tmp_path_factory.mktemp("tinyllm"))


@pytest.fixture(scope="session")
def llm_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("ONDECK_TINYLLM_CACHE")
    return Path(cache) / "store" if cache else tmp_path_factory.mktemp("llm-store")


@pytest.fixture(scope="session")
def fp32_artifact(tiny_folder: Path, llm_store: Path) -> Outcome:
    return convert(ConvertRequest(source=str(tiny_folder), store=llm_store, ref="tiny-fp32"))


@pytest.fixture(scope="session")
def int4_artifact(tiny_folder: Path, llm_store: Path) -> Outcome:
    return convert(
        ConvertRequest(
            source=str(tiny_folder), store=llm_store, quantize=Quantize.INT4, ref="tiny-int4"
        )
    )
