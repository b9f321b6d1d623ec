"""The runnable examples in the docstrings of the linalg, diagnostics and optim modules run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import reglab.diagnostics
import reglab.linalg
import reglab.optim

#: modules whose examples sketch a training loop (a model, batches, a trainer) rather than run on their own
SKETCHES = {"reglab.optim.schedules"}
MODULES = sorted(
    info.name
    for package in (reglab.linalg, reglab.diagnostics, reglab.optim)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    if info.name not in SKETCHES
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    torch.manual_seed(0)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
