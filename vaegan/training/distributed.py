"""Data-parallel training with PyTorch's own machinery: torchrun starts one process per
rank, ``torch.distributed`` joins them (NCCL on GPUs, gloo on CPU), and
DistributedDataParallel averages each network's gradients during backward.

What this module adds is only what the VAE-GAN needs on top:

- ``Dist``: who this process is (rank, world size, device) and the few collectives the
  loop uses to make every rank take the same decision (balancing, divergence, stop).
- ``CpuSyncBatchNorm``: ``torch.nn.SyncBatchNorm`` has no CPU kernels (its fused
  ``batch_norm_stats`` ops exist only for accelerators), so on CPU the batch statistics are
  all-reduced with a differentiable all-reduce instead. Same parameters and buffers as
  ``BatchNorm2d``, so checkpoints load into a model with or without it.
- ``launch``: ``vaegan train --nproc N`` re-executes itself under torchrun; ``leave`` ends
  each rank's process once its run is over.

Batch size is global: ``batch_size`` images per step across all ranks, each rank taking
``batch_size / world_size`` of them. The same config therefore trains the same model on
any number of ranks, and checkpoints carry no trace of the world size.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

from vaegan.errors import VaeganError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n``."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, values: list[float]) -> list[float]:
        """The mean over ranks of a few scalars (one all-reduce)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any: ranks must stop at the same step."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``t`` (detached, equal shapes), concatenated in rank order:
        the global batch, as one rank would hold it."""
        if not self.enabled:
            return t.detach()
        dev = _collective_device()
        parts = [torch.empty_like(t, device=dev) for _ in range(self.world_size)]
        dist.all_gather(parts, t.detach().to(dev).contiguous())
        return torch.cat(parts).to(t.device)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = Dist()  # a plain, one-process run


def _collective_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT in the environment); a plain ``vaegan train`` is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, pick_device(device_name)
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=int(os.environ.get("VAEGAN_DIST_TIMEOUT_MIN", 30))),
        )
    return d, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """End a rank's process with ``code`` once its run is over, without the interpreter's
    teardown. Once DistributedDataParallel has wrapped a module, the process group outlives
    ``destroy_process_group`` (references DDP took in C++ stay after the module is gone), so
    gloo's threads still run at exit; a rank of a run that had finished and saved was seen
    to abort there ('terminate called without an active exception'), and torchrun then
    reported the whole run failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaeganError(f"device {name} requested but CUDA is not available")
    return torch.device(name)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank's share of the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() / c])])
        total = _AllReduceSum.apply(local)
        count = total[c]
        mean = total[:c] / count
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / count
        with torch.no_grad():  # the running statistics BatchNorm2d keeps, from global ones
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d -> its synchronised form (PyTorch's on accelerators, ours on CPU),
    keeping parameters and running statistics."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CpuSyncBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return module


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``vaegan <argv>`` as ``nproc`` ranks on this machine under torchrun. For several
    machines, run torchrun yourself (see the README): --nnodes, --rdzv-backend c10d,
    --rdzv-endpoint HOST:PORT."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "vaegan.cli",
        *argv,
    ]
    print("launching:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)
