"""What stops a training run, and how every rank agrees on it.

- SIGTERM (a cancelled flow run, a drained node, a spot reclaim): `StopRequest` turns it into a flag the
  loop checks at step boundaries, agreed over all ranks so they stop after the same step (`Preempted`).
- A bad loss: `DivergenceGuard` counts non-finite losses (or ones above `train.max_loss`) in a row and
  raises `Diverged` after `train.divergence_patience`; `sknet train` exits with `DIVERGED_EXIT_CODE`.
- A lost launcher: `watch_launcher` makes a rank whose launcher died stop as on SIGTERM.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sknet.errors import SknetError

log = logging.getLogger(__name__)

LAUNCHED_ENV = "SKNET_LAUNCHED"  # set by the launcher, which pulls the mirrored checkpoint once per node
LAUNCHER_ENV = "SKNET_LAUNCHER"  # "<pid>:<start time>" of the launcher: a rank outliving it stops itself
WATCHDOG_SECONDS = 1.0


def launcher_identity() -> dict[str, str]:
    """The environment that tells a rank which launcher it belongs to (PID and start time: PIDs are reused)."""
    import psutil

    me = psutil.Process()
    return {LAUNCHER_ENV: f"{me.pid}:{me.create_time()}"}


def watch_launcher(grace_seconds: float) -> None:
    """If this rank's launcher dies (SIGKILLed, OOM-killed), stop as on SIGTERM — a checkpoint at the next step
    boundary — and exit outright `grace_seconds` later if that cannot happen (a peer is gone mid-all-reduce).
    An orphan must never keep the devices or write checkpoints beside a retry."""
    identity = os.environ.get(LAUNCHER_ENV)
    if not identity:
        return
    pid, started = identity.split(":")

    def alive() -> bool:
        import psutil

        try:
            return abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.01
        except psutil.NoSuchProcess:
            return False

    def watch() -> None:
        while alive():
            time.sleep(WATCHDOG_SECONDS)
        log.warning("the launcher (pid %s) is gone: stopping at the next step boundary", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)
        log.error("could not stop within %g s of losing the launcher: exiting", grace_seconds)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


class Preempted(SknetError):
    """SIGTERM arrived: the run stopped at a step boundary after saving a checkpoint."""

    def __init__(self, step: int, output_dir: Path):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint saved in {output_dir}/checkpoints, "
                         "run the same command again to resume")
        self.step = step


DIVERGED_MARKER = "training stopped on a bad loss"  # in every divergence message (msrun hides exit codes)


class Diverged(SknetError):
    """The loss went non-finite (or above train.max_loss) for train.divergence_patience steps in a row."""

    def __init__(self, step: int, loss: float, reason: str, checkpoint: Path | None):
        kept = (f"the last finite checkpoint is {checkpoint} (resume from it with another recipe)" if checkpoint
                else "no checkpoint was kept")
        super().__init__(f"loss is {reason} at step {step} (loss {loss}); {DIVERGED_MARKER}, {kept}. Lower "
                         "train.base_lr or check the data")
        self.step = step


DIVERGED_EXIT_CODE = 3  # `sknet train` exits with it; the launcher and the flow do not retry it


class DivergenceGuard:
    """Counts consecutive bad losses (non-finite, or above `max_loss` when set); `bad` says whether the
    current one is bad, `check` raises `Diverged` once `patience` are bad in a row."""

    def __init__(self, patience: int, max_loss: float | None):
        self.patience, self.max_loss, self.in_a_row, self.bad = patience, max_loss, 0, False

    def reason(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non-finite"
        if self.max_loss is not None and loss > self.max_loss:
            return f"above train.max_loss={self.max_loss:g}"
        return None

    def check(self, step: int, loss: float, last_checkpoint: Callable[[], Path | None]) -> None:
        """Count `loss`; raise `Diverged` naming `last_checkpoint()` (asked only then) once patience runs out."""
        reason = self.reason(loss)
        self.bad = reason is not None
        self.in_a_row = self.in_a_row + 1 if self.bad else 0
        if self.bad:
            log.warning("step %d: loss is %s (%s); %d of train.divergence_patience=%d", step, reason, loss,
                        self.in_a_row, self.patience)
        if self.in_a_row >= self.patience:
            raise Diverged(step, loss, reason, last_checkpoint())


class StopRequest:
    """Turns SIGTERM (cancel, node drain, spot reclaim) into a flag the loop checks at step boundaries.

    With several ranks the signal reaches them a moment apart, possibly a step apart: `agreed` sums the
    flags over all ranks (one tiny all-reduce per step boundary), so every rank stops after the same step
    and none is left waiting in the next step's gradient all-reduce.

    Before the first boundary (start-up: the graph compile, a resumed dataset replaying its pipeline) there is
    nothing new to save and no boundary may come for minutes: a SIGTERM then exits at once (143). A thread sees
    it through `signal.set_wakeup_fd`, which the C-level handler writes even while the main thread is in
    MindSpore's C++ code (where Python handlers wait).
    """

    def __init__(self):
        self.requested = False
        self.boundary_reached = False
        self._previous = None
        self._all_reduce = None
        self._wakeup: tuple[int, int] | None = None  # (our pipe's write end, the wakeup fd before ours)

    def reached_boundary(self) -> None:
        """Called at each step boundary: from now on a SIGTERM stops the run at the next one."""
        self.boundary_reached = True

    def agreed(self, ranks: int) -> bool:
        """Whether any rank was asked to stop (every rank gets the same answer); call on every rank at once."""
        if ranks == 1:
            return self.requested
        import numpy as np
        from mindspore import Tensor, ops

        if self._all_reduce is None:
            self._all_reduce = ops.AllReduce(ops.ReduceOp.SUM)  # CPU collectives have SUM only
        flags = self._all_reduce(Tensor(np.array([float(self.requested)], np.float32)))
        return bool(flags.asnumpy()[0] > 0)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._wakeup = (write, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
            threading.Thread(target=self._exit_during_start_up, args=(read,), name="sigterm-at-start-up",
                             daemon=True).start()
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")
        self.requested = True

    def _exit_during_start_up(self, read: int) -> None:
        while signals := os.read(read, 64):
            if signal.SIGTERM in signals and not self.boundary_reached:
                log.warning("SIGTERM during start-up (compiling, or replaying the data up to the resumed step): "
                            "nothing new to checkpoint, exiting now")
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(128 + signal.SIGTERM)
        os.close(read)  # __exit__ closed the write end

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        if self._wakeup is not None:
            write, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(write)
