"""Trainer throughput: reglab's Trainer against a plain PyTorch loop doing the same work.

Both loops train the same model (a deep copy of one initialization) with the
same optimizer and loss on the same data, read the same way:

- ``resnet18_fakedata``: torchvision's ResNet-18 (reglab's ``torchvision``
  model entry: CIFAR stem, ``features``/``head`` split) on 32x32 ``FakeData``
  streamed through a ``DataLoader`` (the ``torchvision`` task's transforms:
  ToTensor, normalization, random crop and flip), batch 128, SGD with
  momentum; on the CPU in float32 and, when CUDA is available, on the GPU in
  bf16 (autocast, ``pin_memory``, ``non_blocking`` copies, 4 workers).
- ``mlp_mnist1d``: the reference MLP on MNIST-1D held in memory, batch 128, Adam.

Only training steps are timed: from the end of the first step (warm-up: cuDNN
autotuning, worker start-up) to the end of the last, measured for the Trainer
by a callback, so its evaluations at the start and the end are excluded. The
plain loop does what the Trainer does per step except its bookkeeping
(gradient norm, one host transfer of the logged numbers, divergence check,
callbacks). Repeats are interleaved (plain, Trainer, plain, ...) and the ratio
is the Trainer's median time over the plain loop's; images/s is for the
Trainer.

    python benchmarks/trainer_throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save  # noqa: E402
from reglab import tasks  # noqa: E402
from reglab.core import Callback  # noqa: E402
from reglab.losses import CrossEntropy  # noqa: E402
from reglab.train import Precision, Trainer  # noqa: E402
from reglab.train.trainer import epoch_batches  # noqa: E402


class _StepClock(Callback):
    """Seconds from the end of step 1 to the end of the last step."""

    def __init__(self, steps: int, device: torch.device):
        self.steps, self.device, self.start, self.seconds = steps, device, 0.0, 0.0

    def on_step_end(self, trainer, step, info):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if step == 1:
            self.start = time.perf_counter()
        elif step == self.steps:
            self.seconds = time.perf_counter() - self.start


def plain_streamed(task, model, steps, batch, device, precision, workers):
    """A DataLoader loop over the same dataset, order and transforms as the Trainer's streamed path."""
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    amp = Precision(precision, device)
    batches = (b.tolist() for b in epoch_batches(len(task.train), batch, torch.Generator().manual_seed(0)))
    loader = torch.utils.data.DataLoader(
        task.train,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    start = 0.0
    for done, (x, y, _) in enumerate(loader, start=1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with amp.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if done == 1:
            start = time.perf_counter()
        if done == steps:
            break
    return time.perf_counter() - start


def _trainer_seconds(task, model, opt, steps, batch, device, precision, workers):
    """Seconds the Trainer takes for steps 2..steps (its evaluations at the start and the end are not timed)."""
    clock = _StepClock(steps, device)
    Trainer(
        task,
        model,
        CrossEntropy(),
        opt,
        steps=steps,
        batch_size=batch,
        eval_every=10**9,
        callbacks=[clock],
        device=device,
        precision=precision,
        num_workers=workers,
        eval_batch_size=512,
    ).fit()
    return clock.seconds


def reglab_streamed(task, model, steps, batch, device, precision, workers):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return _trainer_seconds(task, model, opt, steps, batch, device, precision, workers)


def plain_memory(task, model, steps, batch, device, precision, workers):
    x, y, _ = tasks.as_tensors(task.train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = epoch_batches(len(y), batch, torch.Generator().manual_seed(0))
    start = 0.0
    for step in range(1, steps + 1):
        b = next(batches)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[b]), y[b]).backward()
        opt.step()
        if step == 1:
            start = time.perf_counter()
    return time.perf_counter() - start


def reglab_memory(task, model, steps, batch, device, precision, workers):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _trainer_seconds(task, model, opt, steps, batch, device, precision, workers)


def fakedata_task(n_train: int, n_test: int) -> tasks.Task:
    """32x32 FakeData with the ``torchvision`` task's CIFAR-style transforms (a small test split: the Trainer's
    evaluations are not timed, but they take wall time)."""
    import torchvision

    from reglab.tasks.vision import image_transforms

    train_tf, eval_tf = image_transforms("FakeData", (32, 32), augment=True)
    make = torchvision.datasets.FakeData
    return tasks.from_datasets(
        make(size=n_train, image_size=(3, 32, 32), num_classes=10, transform=train_tf),
        make(size=n_test, image_size=(3, 32, 32), num_classes=10, transform=eval_tf, random_offset=n_train),
        train_eval=make(size=n_train, image_size=(3, 32, 32), num_classes=10, transform=eval_tf),
        num_classes=10,
    )


def measure(name, task, init, loops, steps, batch, device, precision, workers, repeats):
    times = {"plain": [], "reglab": []}
    for _ in range(repeats):  # interleaved
        for label, loop in zip(("plain", "reglab"), loops):
            torch.manual_seed(0)
            times[label].append(loop(task, copy.deepcopy(init), steps, batch, device, precision, workers))
    plain, ours = statistics.median(times["plain"]), statistics.median(times["reglab"])
    timed = steps - 1
    return {
        "case": name,
        "device": str(device),
        "precision": precision,
        "batch": batch,
        "timed steps": timed,
        "plain ms/step": 1e3 * plain / timed,
        "reglab ms/step": 1e3 * ours / timed,
        "ratio": ours / plain,
        "reglab images/s": batch * timed / ours,
        "plain images/s": batch * timed / plain,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-steps", type=int, default=6, help="ResNet-18 steps per repeat on the CPU")
    args = parser.parse_args(argv)
    rows = []
    fake = fakedata_task(n_train=800, n_test=128)  # 800 >= 6 batches of 128
    torch.manual_seed(0)
    resnet = fake.make_model("torchvision", arch="resnet18")
    cpu = torch.device("cpu")
    settings = [(cpu, "32", args.cpu_steps, 0)]  # (device, precision, steps per repeat, DataLoader workers)
    if torch.cuda.is_available():
        settings.append((torch.device("cuda"), "bf16", 60, 4))
    for device, precision, steps, workers in settings:
        loops = (plain_streamed, reglab_streamed)
        rows.append(
            measure("resnet18_fakedata", fake, resnet, loops, steps, 128, device, precision, workers, args.repeats)
        )
    mnist = tasks.get("mnist1d")
    torch.manual_seed(0)
    mlp = mnist.make_model("mlp")
    rows.append(measure("mlp_mnist1d", mnist, mlp, (plain_memory, reglab_memory), 400, 128, cpu, "32", 0, args.repeats))
    note = (
        f"median of {args.repeats} interleaved repeats; training steps only (the first step excluded); "
        "ratio = reglab Trainer time / plain PyTorch loop time (targets: <= 1.05 ResNet-18, <= 1.10 MLP)"
        + ("" if torch.cuda.is_available() else "; no CUDA device on this machine, so no GPU row")
    )
    save("trainer_throughput", rows, note)


if __name__ == "__main__":
    main()
