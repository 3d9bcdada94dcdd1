"""Domain exceptions: each message says what is wrong, where, and what was expected."""


class SknetError(Exception):
    """Base class for errors a user can act on (bad config, bad data, failed check)."""


class ConfigError(SknetError):
    """A config file or override is invalid."""


class DataError(SknetError):
    """A dataset on disk does not match the CIFAR-10 binary layout."""


class ExportError(SknetError):
    """An exported model failed its round-trip check."""


class LaunchError(SknetError):
    """The run could not start, a rank failed, or it timed out; `result` (a LaunchResult) says which."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class CheckpointError(SknetError):
    """A checkpoint is missing or does not fit the network."""
