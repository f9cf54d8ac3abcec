"""Multi-GPU training (DDP): one ``kdsum train`` command, relaunched under ``torchrun`` when ``train.num_gpus > 1``.

Why the stage relaunches itself rather than the rule calling ``torchrun``: the rule stays one ``kdsum train``
command for every job (and DVC gets the same command), the number of processes comes from the job's spec (the
one place it is set), and the launching process first claims ``num_gpus`` GPU slots (kdsum.gpu.slots), so the
ranks start with ``CUDA_VISIBLE_DEVICES`` already narrowed to free devices. The parent waits for ``torchrun`` and
exits with its status; if the parent is killed, the kernel sends ``torchrun`` SIGTERM (``PR_SET_PDEATHSIG``),
which stops the ranks, and the slots' locks die with the parent.

Each rank (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` from torchrun) builds the same Trainer; accelerate initialises
the process group (NCCL on GPUs, gloo on CPUs, which is how the tests run two ranks without a GPU) and shards each
batch of the dataloader over the ranks. The global batch stays what one GPU trains:
``per_device_train_batch_size x gradient_accumulation_steps``, the accumulation divided by the world size
(kdsum.gpu.preflight.written_batch, kdsum.config.spec.per_rank_accumulation; a config where it does not divide is
refused, naming the key). A 4-bit QLoRA base is loaded by every rank on its own device (kdsum.models.loading uses the current
device, which :func:`setup_rank` sets before the memory planner reads that device's free memory).
Only rank 0 deletes stale outputs, prepares the checkpoint directory and writes the outputs
(:func:`rank_zero_first`, :func:`is_main`); the Trainer saves checkpoints from rank 0 with every rank's RNG state,
so a killed multi-GPU run resumes like a single one.

Notes (transformers 5.23, accelerate 1.15, TRL 1.16, peft 0.21):
- ``ddp_find_unused_parameters``: the Trainer turns it on for any model that is not a ``PreTrainedModel`` (a
  ``PeftModel`` is not), which costs a graph traversal each step. Every trainable parameter takes part in each
  step here (LoRA on the linears, the data-token rows, a full fine-tune), so the training stage sets it off
  (kdsum.training.trainer.trainer_arguments).
- Packing (TRL's bfd, padding-free rows with ``position_ids``) happens once on the whole dataset before the
  sampler; each rank gets whole packed rows, so sequences never straddle ranks. Losses are summed over the
  completion tokens of the whole global batch (``average_tokens_across_devices``), so the ranks' different token
  counts do not reweight the loss.
  The varlen kernel (kdsum.gpu.attention) reads each rank's own ``position_ids``: nothing changes for it.
- Tokens: ``num_input_tokens_seen`` is gathered over ranks by the Trainer (and the seq2seq target count by
  kdsum.training.hooks through ``accelerator.gather``), so train_metrics.json counts every rank's tokens.
- Where ranks differ from one process: dropout masks (each rank has its own RNG stream; tiny-bart, dropout 0.1,
  3 steps: losses within 4e-4 relative), and the end of an epoch, where accelerate's ``even_batches`` repeats
  up to ``world_size x batch - 1`` rows so every rank gets a full batch (the ``epoch`` column differs slightly).
- A rank's refusal (a KdsumError) prints its one line in the log; torchrun then exits 1, not 2. The spec's own
  checks (the accumulation, the GPU count) run in the launcher first and exit 2 as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def needs_launch(num_gpus: int) -> bool:
    """Whether this process must start ``num_gpus`` ranks (it is not one already)."""
    return num_gpus > 1 and "LOCAL_RANK" not in os.environ


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG = 1)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def launch_command(stage_argv: list[str], num_gpus: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local rendezvous port: two multi-GPU jobs on one machine do not collide
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(num_gpus),
        "-m",
        "kdsum",
        *stage_argv,
    ]


def launch(stage_argv: list[str], num_gpus: int) -> int:
    """Run ``kdsum <stage_argv>`` as ``num_gpus`` ranks under torchrun; returns its exit status."""
    cmd = launch_command(stage_argv, num_gpus)
    log.info("launching %d ranks: %s", num_gpus, " ".join(cmd))
    # a rank's failure stops the others; each rank's own error line is in the log above torchrun's report
    return subprocess.run(cmd, preexec_fn=_die_with_parent, check=False).returncode


def setup_rank() -> None:
    """In a rank on CUDA: its own device current before anything (planner, 4-bit loading) touches CUDA."""
    import torch

    if world_size() > 1 and torch.cuda.is_available():
        torch.cuda.set_device(local_rank())


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (deleting, preparing directories), the other ranks after it finished."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def gather_max(value: float | None) -> float | None:
    """The largest of the ranks' values (peak memory)."""
    import torch.distributed as dist

    if world_size() == 1 or not dist.is_initialized():
        return value
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    present = [v for v in values if v is not None]
    return max(present) if present else None
