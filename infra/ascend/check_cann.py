"""Fail the image build when MindSpore does not accept the CANN its base image installed.

MindSpore checks the CANN version only when a process first targets Ascend, and then merely logs a warning
(`AscendEnvChecker.check_version` in mindspore/run_check/_check_version.py): a wrong base would be found at
the first night's first step, in a log. The Dockerfile runs this instead, so it fails `docker build`.

The version is read the way MindSpore reads it — its own `AscendEnvChecker`, on
`$ASCEND_HOME_PATH/compiler/version.info`, `Version=<major>.<minor>…` — and compared with the list of the
installed MindSpore, so this check cannot drift from the wheel it guards.

    python3 infra/ascend/check_cann.py    # prints "CANN 9.1 accepted by MindSpore 2.10.0", or exits 1
"""

from __future__ import annotations

import sys
from pathlib import Path


class CannRejected(Exception):
    """The CANN in this image is missing or not one the installed MindSpore accepts."""


def accepted_cann() -> str:
    """The installed CANN's `<major>.<minor>`, if the installed MindSpore accepts it; `CannRejected` otherwise."""
    import mindspore
    from mindspore.run_check._check_version import AscendEnvChecker

    checker = AscendEnvChecker(None)  # reads ASCEND_HOME_PATH, as MindSpore does when it targets Ascend
    version_file = Path(checker.compiler_version) if checker.compiler_version else None
    if version_file is None or not version_file.is_file():
        raise CannRejected(
            f"no CANN version file at {version_file or '$ASCEND_HOME_PATH/compiler/version.info'} "
            "(ASCEND_HOME_PATH unset or wrong): the base image must be an ascendai/cann image, which sets it")
    found = checker._read_version(str(version_file))  # MindSpore's own parser of that file
    if found not in checker.version:
        raise CannRejected(
            f"CANN {found or '(unreadable)'} from {version_file} is not accepted by MindSpore "
            f"{mindspore.__version__}, which expects one of {', '.join(checker.version)}: choose a base image "
            "of one of those (infra/ascend/Dockerfile, CANN_VERSION)")
    return found


def main() -> int:
    import mindspore

    try:
        found = accepted_cann()
    except CannRejected as error:
        print(f"check_cann: {error}", file=sys.stderr)
        return 1
    print(f"CANN {found} accepted by MindSpore {mindspore.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
