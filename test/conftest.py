"""Shared pytest fixtures."""
import pytest

from espnet_llm.mini.make_tiny_models import make_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """DIR with the tiny whisper/ and chatglm3/ models, written once per test session."""
    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"), seed=0)
