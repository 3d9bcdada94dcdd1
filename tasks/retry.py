"""Which failures a task retries: transient ones (storage/network, a crashed rank), never bad input."""

from __future__ import annotations

from sknet.launch.launcher import LaunchError
from sknet.storage import IncompleteError, StorageError


def transient_only(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    if isinstance(error, IncompleteError):
        return False  # a prefix without a manifest will not complete by itself
    if isinstance(error, (StorageError, ConnectionError, TimeoutError)):
        return True
    return isinstance(error, LaunchError) and error.result is not None and error.result.failed_rank is not None
