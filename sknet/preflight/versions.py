"""Versions: Python, MindSpore and numpy against what sknet declares; on Ascend the NPU driver and the CANN
version, the latter against the list MindSpore itself accepts.

MindSpore 2.10 checks CANN in `mindspore/run_check/_check_version.py`: `AscendEnvChecker.version` is the
accepted list, and it reads the installed version from `$ASCEND_HOME_PATH/compiler/version.info` (the
`Version=` line, major.minor). We call that class rather than keep a copy of the list: it needs no NPU.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

from sknet.preflight.runner import Context, Failed, Outcome
from sknet.preflight.tools import has_tool

DISTRIBUTION = "sknet-pipeline"
# The oldest Ascend HDK (NPU driver) each CANN MindSpore 2.10 accepts runs on. Sources: CANN 8.5.0 release notes,
# "CANN Version Mapping" (Ascend HDK 25.0.X-25.5.X); for 8.2 and 8.3, which have no such page here, the Ascend
# components' compatibility tables (MindIE 2.1.RC1: CANN 8.2.RC1 with HDK 24.1.RC2-25.2.0; MindSDK 7.2.RC1: CANN
# 8.3.RC1 with HDK 24.1.0-25.3.RC1); 9.0 and 9.1 as infra/ascend/Dockerfile has it (CANN 9.1 needs HDK 25.2).
MIN_DRIVER = {"8.2": "24.1.RC2", "8.3": "24.1.0", "8.5": "25.0.RC1", "9.0": "25.2.0", "9.1": "25.2.0"}
NUMPY_SERIES = (1, 26)  # mindspore 2.10 needs numpy 1.26.x (with numpy 2 its PyNative mode crashes)
SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"


def _declared(package: str) -> str | None:
    """The version specifier sknet's own metadata declares for `package` (None when not installed as such)."""
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    specs = [str(r.specifier) for r in map(Requirement, requirements) if r.name == package and not r.marker]
    return specs[0] if specs else None


def _python_and_packages() -> tuple[list[str], list[str]]:
    """(findings, problems) for Python, MindSpore and numpy."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    found, problems = [f"Python {platform.python_version()}"], []
    try:
        wanted = importlib.metadata.metadata(DISTRIBUTION)["Requires-Python"]
    except importlib.metadata.PackageNotFoundError:
        wanted = None
    if wanted and platform.python_version() not in SpecifierSet(wanted):
        problems.append(f"Python {platform.python_version()}: {DISTRIBUTION} requires Python {wanted}")
    for package in ("mindspore", "numpy"):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{package} is not installed in {Path(sys.executable).parent.parent}")
            continue
        found.append(f"{package} {version}")
        spec = _declared(package)
        if spec and version not in SpecifierSet(spec):
            problems.append(f"{package} {version}: {DISTRIBUTION} requires {package}{spec}")
        if package == "numpy" and Version(version).release[:2] != NUMPY_SERIES:
            problems.append(f"numpy {version}: mindspore 2.10 needs numpy 1.26.x: pip install 'numpy>=1.26,<2'")
    return found, problems


def _driver_version() -> str:
    from sknet.preflight.npu_smi import read_npu_smi

    version = read_npu_smi().driver_version
    if not version:
        raise Failed("`npu-smi info` shows no driver version (expected 'Version: X' in its first line)")
    return version


def cann_version() -> tuple[str, list[str], str]:
    """(installed CANN major.minor, the versions MindSpore accepts, the file read), through MindSpore's checker."""
    from mindspore.run_check._check_version import AscendEnvChecker

    checker = AscendEnvChecker(None)  # reads only the environment: no NPU, no library
    if not os.environ.get("ASCEND_HOME_PATH"):
        raise Failed(f"ASCEND_HOME_PATH is not set: MindSpore reads the CANN version from "
                     f"$ASCEND_HOME_PATH/compiler/version.info; source the CANN environment (e.g. {SET_ENV})")
    path = Path(checker.compiler_version)
    if not path.is_file():
        raise Failed(f"{path} does not exist: ASCEND_HOME_PATH={os.environ['ASCEND_HOME_PATH']} is not a CANN "
                     f"toolkit (expected compiler/version.info with a Version= line)")
    version = checker._read_version(str(path))  # MindSpore's own reader: the Version= line, major.minor
    if not version:
        raise Failed(f"{path} has no Version= line (expected e.g. Version=8.3.RC1)")
    return version, list(checker.version), str(path)


def hdk_order(version: str) -> tuple:
    """An Ascend HDK version as a sort key: 24.1.RC2 < 24.1.RC3 < 24.1.0 < 24.1.0.1 < 25.0.RC1 (an RC precedes its
    release); an unreadable part sorts first."""
    key = []
    for part in version.strip().split("."):
        upper = part.upper()
        if upper.startswith("RC") and upper[2:].isdigit():
            key.append((0, int(upper[2:])))
        elif part.isdigit():
            key.append((1, int(part)))
        else:
            key.append((-1, 0))
    return tuple(key)


def driver_problem(driver: str, cann: str) -> str | None:
    """Why NPU driver `driver` cannot run CANN `cann` (major.minor), per MIN_DRIVER; None when it can."""
    wanted = MIN_DRIVER.get(cann)
    if wanted is None or hdk_order(driver) >= hdk_order(wanted):
        return None
    return (f"NPU driver {driver}: CANN {cann} needs Ascend HDK {wanted} or newer on the host (upgrade the driver "
            "and firmware, or use an image on an older CANN that MindSpore accepts)")


def _ascend_versions() -> tuple[list[str], list[str]]:
    """(findings, problems) for the NPU driver and CANN, and the driver against the CANN; each is tried even when
    the other fails."""
    found, problems, driver = [], [], None
    try:
        driver = _driver_version()
        found.append(f"NPU driver {driver}")
    except Failed as exc:
        problems.append(f"NPU driver: {exc}")
    try:
        version, accepted, path = cann_version()
    except Failed as exc:
        problems.append(f"CANN: {exc}")
    else:
        found.append(f"CANN {version} ({path})")
        if version not in accepted:
            problems.append(f"CANN {version} ({path}): MindSpore {importlib.metadata.version('mindspore')} accepts "
                            f"CANN {', '.join(accepted)}; install one of those")
        if driver is not None and (problem := driver_problem(driver, version)) is not None:
            problems.append(problem)
    return found, problems


def check_versions(ctx: Context) -> Outcome:
    """Python, MindSpore, numpy; with an Ascend run on an Ascend host also the driver and CANN."""
    found, problems = _python_and_packages()
    if ctx.cfg.train.device_target != "Ascend":
        note = f"driver and CANN not checked: train.device_target={ctx.cfg.train.device_target}"
    elif not has_tool("npu-smi"):
        note = "driver and CANN not checked: npu-smi not found on PATH: not an Ascend host"
    else:
        ascend_found, ascend_problems = _ascend_versions()
        found, problems, note = found + ascend_found, problems + ascend_problems, ""
    data = {"found": found}
    if problems:
        raise Failed("\n".join(problems), data)
    return Outcome(", ".join(found) + (f"; {note}" if note else ""), data)
