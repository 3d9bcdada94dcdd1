"""A stalled run is a failed run: every rank's step lines, watched for a silence.

Each rank logs a step line (`sknet.training.train_log`) every `train.log_every_steps` steps. Once the first one
has come (compiling and loading data take as long as they take), a run in which no rank logs another for
`launch.stall_timeout_seconds` has stalled: a collective waiting for a peer that never comes (an HCCL hang), a
stuck input pipeline, a rank stopped by the OS. A rank that logged its last step (`step N/N`) is done, not
stalled. The watch only reads the launcher's `[rank N] ` lines, so it sees every backend's ranks alike.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sknet.training.train_log import parse_step_line

RANK_PREFIX = re.compile(r"\[rank (\d+)\] ")  # how the launcher prefixes a rank's output
TAIL_LINES = 20
SHOWN = 5  # of each stalled rank, in the error message (launch.json keeps TAIL_LINES)


@dataclass(frozen=True)
class StalledRank:
    rank: str
    last_step: int | None  # None: it logged no step (the run's first step line came from another rank)
    seconds_since: float  # since its last step line (or the run's first one)
    last_lines: list[str] = field(default_factory=list)


class StallWatch:
    """Follows rank output lines (`observe`, from any thread); `check()` says which ranks stopped advancing
    once no rank has logged a step for `timeout_seconds` (0: never)."""

    def __init__(self, timeout_seconds: float, ranks: Iterable[int | str],
                 clock: Callable[[], float] = time.monotonic):
        self.timeout, self.clock = timeout_seconds, clock
        self.tails = {str(rank): deque(maxlen=TAIL_LINES) for rank in ranks}
        self.last_step: dict[str, tuple[int, float]] = {}  # rank → (step, when it was logged)
        self.done: set[str] = set()  # ranks that logged their last step
        self.first_step_at: float | None = None
        self.stalled: list[StalledRank] = []  # set by the `check` that found the stall
        self._lock = threading.Lock()

    def observe(self, line: str) -> None:
        """Take one prefixed output line; lines of no rank (the launcher's, the scheduler's) are ignored."""
        if (match := RANK_PREFIX.match(line)) is None:
            return
        rank, text = match.group(1), line[match.end():]
        found, now = parse_step_line(text), self.clock()
        with self._lock:
            self.tails.setdefault(rank, deque(maxlen=TAIL_LINES)).append(text)
            if found is None:
                return
            self.last_step[rank] = (found.step, now)
            self.first_step_at = now if self.first_step_at is None else self.first_step_at
            if found.step >= found.total_steps:
                self.done.add(rank)

    def watching(self, on_line: Callable[[str], None]) -> Callable[[str], None]:
        """`on_line`, with each line observed first."""
        def call(line: str) -> None:
            self.observe(line)
            on_line(line)

        return call

    def check(self) -> list[StalledRank]:
        """The ranks still training, laggards first, if no rank has logged a step for the timeout; else []."""
        if not self.timeout or self.first_step_at is None:
            return []
        now = self.clock()
        with self._lock:
            newest = max(when for _, when in self.last_step.values())
            waiting = [rank for rank in self.tails if rank not in self.done]
            if now - newest < self.timeout or not waiting:
                return []
            self.stalled = sorted((self._stalled(rank, now) for rank in waiting),
                                  key=lambda r: (-1 if r.last_step is None else r.last_step, -r.seconds_since))
        return self.stalled

    def _stalled(self, rank: str, now: float) -> StalledRank:
        step, when = self.last_step.get(rank, (None, self.first_step_at))
        return StalledRank(rank, step, round(now - when, 1), list(self.tails[rank]))

    def reason(self) -> str:
        """What `check` found, one clause per rank (rank, last step, seconds since)."""
        ranks = "; ".join(f"rank {r.rank} at step {r.last_step}, {r.seconds_since:.0f} s since its last step line"
                          if r.last_step is not None else f"rank {r.rank}, no step logged in {r.seconds_since:.0f} s"
                          for r in self.stalled)
        return (f"stalled: no rank logged a step for {self.timeout:g} s (launch.stall_timeout_seconds); "
                f"the ranks that stopped advancing: {ranks}")

    def last_lines(self) -> str:
        """Each stalled rank's last lines, under its name."""
        return "\n".join(f"rank {r.rank}, last lines:\n" + "\n".join(f"  {line}" for line in r.last_lines[-SHOWN:])
                         for r in self.stalled)
