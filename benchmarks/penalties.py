"""Penalty cost: one training step with each registered penalty relative to a plain cross-entropy step.

Every penalty is built with weight 1e-4 and its default arguments, on the
MNIST-1D MLP (batch 128) and the digits 2-D CNN (batch 64), and timed inside
``reglab.train.train_step`` with SGD, in one run; the baseline step (no
penalty) is re-timed beside each penalty and the minimum over repeats is used.
A penalty with task state (EWC) is consolidated on one batch first; those
with required arguments get them from ``EXTRA`` and ``PAIRS``; one that cannot
run on a model (conv_orthogonality on the MLP) is listed as skipped. Targets
from the issue: Jacobian penalty (1 projection) <= 2.5×, input-gradient norm
<= 3.5×, spectral norm with persistent vectors <= 1.3×, parameter-norm
penalties <= 1.1×.
"""

from __future__ import annotations

import copy

import torch

from benchmarks.common import best_of, save
from reglab import penalties as reglab_penalties
from reglab import tasks
from reglab.core import ReglabError
from reglab.losses import CrossEntropy
from reglab.train import train_step

REPEATS, INNER = 5, 20
#: Arguments for penalties that have required ones beyond the weight.
EXTRA = {
    "elle": {"epsilon": 0.1},
    "vat": {"epsilon": 1.0},
    "igr": {"lr": 0.1},
    "flooding": {"flood_level": 0.05, "weight": 1.0},
    # the docstring's example: a random circular shift of the inputs and of the logits
    "soft_equivariance": {
        "act_in": lambda x, k: torch.roll(x, int(k), dims=-1),
        "act_out": lambda y, k: torch.roll(y, int(k), dims=-1),
        "sample_group": lambda x: torch.randint(x.shape[-1], ()),
    },
}
#: Per model: the matrices pairwise_orthogonality compares (columns of equal height: the two hidden layers).
PAIRS = {"mlp": r"^body\.\d+\.weight$", "cnn2d": r"^conv\.\d+\.weight$"}
SETUPS = (("mnist1d", "mlp", 128), ("digits", "cnn2d", 64))


def _batch(task: tasks.Task, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, idx = tasks.as_tensors(task.train)
    return x[:n], y[:n], idx[:n]


def _time(model, batch, penalty) -> float:
    loss = CrossEntropy()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def run():
        for _ in range(INNER):
            train_step(model, batch, loss, opt, penalty)

    return best_of(run, REPEATS)[1] / INNER


def main() -> None:
    rows = []
    for task_name, model_name, n in SETUPS:
        task = tasks.get(task_name)
        torch.manual_seed(0)
        init = task.make_model(model_name)
        batch = _batch(task, n)
        for name in reglab_penalties.REGISTRY.names():
            model = copy.deepcopy(init)
            try:
                kwargs = {"weight": 1e-4, **EXTRA.get(name, {})}
                if name == "pairwise_orthogonality":
                    kwargs.update(pattern=PAIRS[model_name], side="columns")
                if "num_classes" in reglab_penalties.REGISTRY.required(name):
                    kwargs["num_classes"] = task.num_classes
                penalty = reglab_penalties.get(name, **kwargs)
                if hasattr(penalty, "consolidate"):
                    penalty.consolidate(model, CrossEntropy(), batch[:2])
                base = _time(copy.deepcopy(init), batch, None)
                t = _time(model, batch, penalty)
            except (ReglabError, TypeError) as err:
                rows.append(
                    {
                        "penalty": name,
                        "setup": f"{task_name}/{model_name}",
                        "ms/step": "–",
                        "base ms/step": "–",
                        "ratio": "–",
                        "note": f"skipped: {str(err).splitlines()[0][:60]}",
                    }
                )
                continue
            rows.append(
                {
                    "penalty": name,
                    "setup": f"{task_name}/{model_name}",
                    "ms/step": 1e3 * t,
                    "base ms/step": 1e3 * base,
                    "ratio": t / base,
                    "note": "",
                }
            )
    save("penalties", rows, f"train_step with SGD, min of {REPEATS}x{INNER}; ratio = with penalty / plain CE step.")


if __name__ == "__main__":
    main()
