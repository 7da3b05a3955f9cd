import warnings

import pytest
import torch

from pruning_course.architectures import TINY_FAMILIES, adapter_for, tiny_model, tiny_tokenizer

warnings.filterwarnings("ignore", message=".*must be `None` or an integer within the vocabulary.*")


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(params=TINY_FAMILIES)
def tiny(request, tokenizer):
    """(model, adapter, tokenizer) for each tiny family, freshly initialised per test."""
    model, tok = tiny_model(request.param, seed=0, tokenizer=tokenizer)
    return model, adapter_for(model), tok


@pytest.fixture
def windows(tokenizer):
    return torch.randint(0, len(tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))
