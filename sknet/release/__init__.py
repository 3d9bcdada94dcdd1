"""Releases: what a passing run ships and how its consumers find it.

`registry` (runs/<id>/ and releases/<model>/<version>/, the LATEST pointer and its compare-and-swap, ls, promote),
`history` (the trail of LATEST's moves), `events` (the payloads of sknet.release.* events), `gate` (the pass/fail
policy), `champion` (the paired challenge of LATEST), `lineage`, `model_card` and `training_key` (when a run would
only repeat a release). The registry's names are imported from here: `from sknet.release import promote, …`.
"""

from sknet.release.registry import (
    LATEST,
    LATEST_ATTEMPTS,
    LINEAGE,
    MODEL_CARD,
    REWRITTEN,
    SEGMENT,
    SEGMENT_RULE,
    BeatLatest,
    LatestNotMoved,
    check_segment,
    content_damage,
    history,
    latest_release,
    list_releases,
    move_latest,
    promote,
    publish_release,
    publish_run,
    release_prefix,
    run_prefix,
)

__all__ = [
    "LATEST", "LATEST_ATTEMPTS", "LINEAGE", "MODEL_CARD", "REWRITTEN", "SEGMENT", "SEGMENT_RULE", "BeatLatest",
    "LatestNotMoved", "check_segment", "content_damage", "history", "latest_release", "list_releases", "move_latest",
    "promote", "publish_release", "publish_run", "release_prefix", "run_prefix",
]
