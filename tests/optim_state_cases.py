"""The optimizer cases of ``tests/data/optim_states_v1.pt``: one config per registered reglab optimizer class.

The file was written by ``tests/optim_state_cases.py`` run against commit 90de699 (``python
tests/optim_state_cases.py OUT``), whose wrappers kept their hyperparameters beside the param groups (and
OrthoGrad and SPECTRA did not save theirs): for each case, the state dict after two steps and the weights after
two more. ``tests/test_optim_contract.py`` loads each state dict into today's class and checks that the next two
steps give the same weights.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn

import reglab.optim

CASES: dict[str, dict] = {
    "sam": {"rho": 0.1, "base": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
    "asam": {"rho": 0.3, "base": {"name": "sgd", "lr": 0.1}},
    "gsam": {"rho": 0.1, "alpha": 0.2, "rho_min": 0.01, "base": {"name": "sgd", "lr": 0.1}},
    "amp": {"epsilon": 0.3, "inner_steps": 2, "base": {"name": "adam", "lr": 0.01}},
    "gam": {"base": {"name": "sgd", "lr": 0.1}},
    "fd_gr": {"gamma": 0.05, "eps": 0.02, "variant": "central", "base": {"name": "sgd", "lr": 0.1}},
    "ignite": {"rho": 0.1, "epsilon": 0.0, "lr_lambda": 0.5, "lambda_init": 1.0, "base": {"name": "sgd", "lr": 0.1}},
    "ortho_grad": {"rescale": False, "base": {"name": "adamw", "lr": 0.01}},
    "lawn": {"warmup_steps": 1, "project_gradient": True, "base": {"name": "adam", "lr": 0.01}},
    "spectra": {"c": 0.05, "mode": "soft", "base": {"name": "adamw", "lr": 0.01, "weight_decay": 0.1}},
    "muon": {"lr": 0.02, "adamw_lr": 0.01},
    "normuon": {"lr": 0.02, "beta2": 0.9, "adamw_lr": 0.01},
    "root": {"lr": 0.01, "adamw_lr": 0.01},
    "auon": {"lr": 0.05, "adamw_lr": 0.01},
    "classp": {"lr": 0.05, "threshold": 1e-6},
}


def model_and_data() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A tiny float64 MLP with fixed weights and a fixed batch."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    return model, (x, y)


def take_steps(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple, steps: int) -> None:
    """``steps`` steps on the batch (with a closure for the optimizers that need one)."""
    x, y = batch

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        if reglab.optim.requires_closure(opt):
            opt.step(closure)
        else:
            closure()
            opt.step()


def write(path: str) -> None:
    out = {}
    for name, kwargs in CASES.items():
        model, batch = model_and_data()
        opt = reglab.optim.get(name, model.parameters(), **kwargs)
        take_steps(model, opt, batch, 2)
        state = copy.deepcopy(opt.state_dict())  # the live buffers change with the next steps
        take_steps(model, opt, batch, 2)
        out[name] = {"state_dict": state, "weights": [p.detach().clone() for p in model.parameters()]}
    torch.save(out, path)


if __name__ == "__main__":
    write(sys.argv[1])
