"""Releases: what a passing run ships and how its consumers find it.

`registry` (runs/<id>/ and releases/<model>/<version>/, the LATEST pointer and its compare-and-swap, ls, promote),
`history` (the trail of LATEST's moves), `events` (the payloads of sknet.release.* events), `gate` (the pass/fail
policy), `champion` (the paired challenge of LATEST), `lineage`, `model_card` and `training_key` (when a run would
only repeat a release). The registry's names are imported from here: `from sknet.release import promote, …`.
"""

from sknet.release.registry import *  # noqa: F403 - the registry's public names (its __all__) are the package's
from sknet.release.registry import __all__  # noqa: F401
