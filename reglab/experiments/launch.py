"""``reglab run CONFIG --nproc N``: one run on N processes (data parallel), launched through ``torch.distributed.run``.

:func:`launch` checks the configs (``--nproc`` against each global batch) and starts ``python -m
torch.distributed.run --standalone --nproc-per-node N -m reglab.experiments.launch ...``; every process then runs
:func:`main`: it joins the process group (``gloo`` on CPUs, ``nccl`` with one GPU per process), and rank 0 runs the
configs exactly as ``reglab run`` does (:func:`reglab.cli.run_configs`: the store, checkpoints, trackers and the
progress bar are rank 0's alone) while every other rank follows it (:func:`~reglab.experiments.runner.follow`),
training its share of each batch (:mod:`reglab.train.distributed`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist

from reglab.core import ConfigError
from reglab.experiments.config import RunConfig


def check_nproc(configs: Sequence[RunConfig], nproc: int) -> None:
    """Check that every config's global batch (``batch_size * accumulate``) splits evenly over ``nproc``
    processes; a ``full`` batch is checked by the trainer, once the task's size is known.

    Raises:
        ConfigError: naming ``--nproc`` and the run.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be an int >= 1, got {nproc!r}")
    for cfg in configs:
        if cfg.train.batch_size == "full":
            continue
        global_batch = cfg.train.batch_size * cfg.train.accumulate
        if nproc > cfg.train.batch_size:
            raise ConfigError(
                f"--nproc {nproc} is larger than train.batch_size={cfg.train.batch_size} of run {cfg.run_name!r}: "
                "every process needs examples of each batch; use fewer processes or a larger batch"
            )
        if global_batch % (nproc * cfg.train.accumulate):
            raise ConfigError(
                f"--nproc {nproc} does not divide train.batch_size={cfg.train.batch_size} of run "
                f"{cfg.run_name!r}; each process takes an equal share of the batch, so use a batch size that is a "
                "multiple of the process count"
            )


def launch(
    config: Path,
    store: Path,
    nproc: int,
    configs: Sequence[RunConfig],
    *,
    resume: bool = False,
    tensorboard: Path | None = None,
    mlflow: str | None = None,
) -> int:
    """Run ``config`` (a run or a study file) on ``nproc`` processes; returns the launcher's exit code."""
    check_nproc(configs, nproc)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "reglab.experiments.launch", str(config), "--store", str(store),
    ]  # fmt: skip
    if resume:
        command.append("--resume")
    if tensorboard is not None:
        command += ["--tensorboard", str(tensorboard)]
    if mlflow is not None:
        command += ["--mlflow", mlflow]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(command, env=env).returncode


def _join_group() -> tuple[int, int]:
    """Join the process group torchrun describes in the environment: nccl with one GPU per local rank, else gloo."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and torch.cuda.device_count() > local_rank:
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def main(argv: Sequence[str] | None = None) -> int:
    """One process of a data-parallel ``reglab run`` (started by :func:`launch`)."""
    from reglab import cli
    from reglab.experiments.config import parse_config, read_yaml
    from reglab.experiments.runner import follow
    from reglab.experiments.study import is_study, parse_study

    parser = argparse.ArgumentParser(prog="reglab.experiments.launch")
    parser.add_argument("config", type=Path)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--tensorboard", type=Path)
    parser.add_argument("--mlflow")
    args = parser.parse_args(argv)
    rank, _ = _join_group()
    try:
        data = read_yaml(args.config)
        study = parse_study(data) if is_study(data) else None
        configs = study.expand() if study else [parse_config(data)]
        name = study.name if study else None
        hashes = None
        if rank == 0 and args.resume:
            configs = cli.configs_without_results(configs, args.store, name)
            hashes = [cfg.config_hash() for cfg in configs]
        box = [hashes]
        dist.broadcast_object_list(box, src=0)  # every rank trains the configs rank 0 runs, in its order
        if box[0] is not None:
            by_hash = {cfg.config_hash(): cfg for cfg in configs}
            configs = [by_hash[h] for h in box[0]]
        if rank != 0:
            for cfg in configs:
                follow(cfg, args.store, resume=args.resume)
            return 0
        with ExitStack() as stack:
            trackers = cli._open_trackers(stack, args.tensorboard, args.mlflow, name)
            outcomes = cli.run_configs(configs, args.store, name, trackers, resume=args.resume)
        cli.console.print(cli._outcome_table(outcomes))
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
