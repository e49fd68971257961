"""Where the training runs: device, AMP, torchrun/DDP process group, and stop signals.

``Runtime.start(cfg)`` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): with more
than one process it joins a process group (gloo on CPU, nccl on CUDA) and wraps the model in DDP.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass

import torch
from torch import nn

from trainer.errors import TrainingError

__all__ = ["Runtime", "StopSignal"]


@dataclass
class Runtime:
    device: torch.device
    amp: bool
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, cfg) -> Runtime:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available (use --device cpu or auto)")
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if use_cuda:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        amp = use_cuda if cfg.amp is None else bool(cfg.amp)
        if amp and not use_cuda:
            raise TrainingError("--amp needs a CUDA device (float16 autocast with GradScaler)")
        rt = cls(device=device, amp=amp, world_size=world_size)
        if world_size > 1:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            rt.rank = dist.get_rank()
        return rt

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def gather(self, obj):
        """Every process's ``obj``, in rank order (a one-item list without DDP); a collective under DDP."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def rank_zero_first(self):
        """Rank 0 runs the block first (e.g. generates a cached corpus), then the other ranks."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:  # also when rank 0 fails: the others then try, fail the same way and exit
            if self.is_main:
                self.barrier()

    def shutdown(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop finishes its current step, then stops cleanly.

    A second Ctrl-C raises KeyboardInterrupt at once (the impatient user's escape hatch), until ``hold()``:
    the training loop turns it into a stop without a checkpoint (exit code 130, run recorded ``stopped``).
    Under DDP every rank must stop at the same step, so the flag is max-reduced across ranks.
    """

    def __init__(self, *, distributed: bool = False):
        self.signum: int | None = None
        self.distributed = distributed
        self.interruptible = True
        self._held = False
        self._deferring = False
        self._pending = False  # a second Ctrl-C not raised yet (it came inside deferred(), or in a finalizer)
        self._previous_hook = sys.unraisablehook

    def _handle(self, signum, frame) -> None:
        if self._held:  # the run's end is being recorded: too late to stop anything
            return
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            if self.interruptible:
                raise KeyboardInterrupt
            self._pending = self._pending or self._deferring
            return
        self.signum = signum

    @contextlib.contextmanager
    def deferred(self):
        """A second Ctrl-C inside the block raises KeyboardInterrupt when the block ends, not inside it."""
        if not self.interruptible:
            yield
            return
        self.interruptible, self._deferring = False, True
        try:
            yield
        finally:
            self.interruptible, self._deferring = True, False
        if self._pending:  # only when the block ended normally: an exception in flight wins
            self._pending = False
            raise KeyboardInterrupt

    def hold(self) -> None:
        """From now on a second Ctrl-C is not an interruption: what runs next records the end of the run
        (the tracker's last rows and status, the summary), which a KeyboardInterrupt would cut short. Nor is
        a first one, or SIGTERM: the status being recorded stands."""
        self.interruptible, self._held = False, True

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        try:
            yield self
        finally:
            sys.unraisablehook = self._previous_hook
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _unraisable(self, unraisable) -> None:
        # A second Ctrl-C that lands while Python runs a finalizer (__del__, a generator's close) cannot
        # propagate: Python would print it as "Exception ignored" and go on. Keep it for the next check.
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._pending = self.interruptible or self._deferring
            return
        self._previous_hook(unraisable)

    def requested(self) -> bool:
        if self._pending and self.interruptible:  # a second Ctrl-C a finalizer swallowed
            self._pending = False
            raise KeyboardInterrupt
        if not self.distributed:
            return self.signum is not None
        import torch.distributed as dist

        flag = torch.tensor([0 if self.signum is None else int(self.signum)])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and int(flag) != 0:
            self.signum = int(flag)
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """0 when finished or stopped by SIGTERM; 130 (128 + SIGINT) after Ctrl-C, the shell convention."""
        return 128 + signal.SIGINT if self.signum == signal.SIGINT else 0
