"""Fixtures for the fine-tuning tests: tiny real datasets and one feature cache for the session.

The models are real (EfficientNet-Lite0 with its packaged ImageNet weights) and so is training;
the data is small so that the whole engine runs in seconds per test on a CPU.
"""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def feature_cache_dir(tmp_path_factory) -> Path:
    """Shared by every test, like a user's ~/.cache: runs on the same images reuse features."""
    path = tmp_path_factory.mktemp("zoo-cache")
    old = os.environ.get("ZOO_CACHE_DIR")
    os.environ["ZOO_CACHE_DIR"] = str(path)
    yield path / "features"
    if old is None:
        os.environ.pop("ZOO_CACHE_DIR", None)
    else:
        os.environ["ZOO_CACHE_DIR"] = old
