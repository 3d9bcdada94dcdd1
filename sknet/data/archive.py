"""A CIFAR-10 binary tarball extracted safely: its MD5 first, then member by member, each a file of the layout at
its size (once), within `MAX_MEMBERS` and `MAX_EXTRACTED_BYTES`, with room for it on the disk."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import tarfile
from pathlib import Path

from sknet.data.layout import (
    FILE_BYTES,
    LAYOUT_DIR,
    META_FILE,
    RECORD_BYTES,
    SYNTHETIC_MARKER,
    TEST_FILE,
    TRAIN_FILES,
)
from sknet.errors import DataError
from sknet.storage import (
    file_hash,
)

log = logging.getLogger(__name__)


MAX_MEMBER_BYTES = 2 * FILE_BYTES  # twice a batch file: a tarball member beyond it is not CIFAR-10

LAYOUT_BYTES = (len(TRAIN_FILES) + 1) * FILE_BYTES  # 184,380,000: the six batch files (batches.meta.txt: 61 more)

MAX_EXTRACTED_BYTES = 2 * LAYOUT_BYTES  # a tarball extracting to more is a decompression bomb, not CIFAR-10

MAX_MEMBERS = 100  # the official tarball has 9: its directory, the 6 batches, batches.meta.txt, readme.html

# What a CIFAR-10 binary tarball may hold, under cifar-10-batches-bin/: each batch at its exact size, and the small
# files at most this many bytes (the official batches.meta.txt has 61, readme.html 88)
SMALL_MEMBERS = {META_FILE: 4096, "readme.html": 65536, SYNTHETIC_MARKER: 65536}

def _md5(path: Path) -> str:
    return file_hash(path, "md5")

def _extract(tarball: Path, target: Path, expected_md5: str, source: str) -> Path:
    """Check the MD5, then extract member by member, each checked first (`_check_member`: a file of the CIFAR-10
    binary layout at its size, once) and the archive held within `MAX_MEMBERS` and `MAX_EXTRACTED_BYTES`, with
    room for it on the disk; return the layout directory. A refusal removes what was extracted."""
    actual = _md5(tarball)
    if actual != expected_md5:
        raise DataError(f"{source}: MD5 {actual}, expected {expected_md5} (corrupt download or not CIFAR-10)")
    target.mkdir(parents=True)
    try:
        check_free_space(target, LAYOUT_BYTES, "extract a CIFAR-10 layout")
        with tarfile.open(tarball, "r|*") as archive:  # a stream: one pass, each member extracted as it is read
            members, total, seen = 0, 0, set()
            for member in archive:
                members, total = members + 1, total + member.size
                _check_member(member, target, source, seen)
                _check_totals(members, total, member, source)
                check_free_space(target, member.size, f"extract {member.name!r} from {source}")
                with no_space_is_clear(target, member.size):
                    archive.extract(member, target, filter="data")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    candidates = [p for p in target.rglob(TEST_FILE)]
    if len(candidates) != 1:
        raise DataError(f"{source}: expected one {LAYOUT_DIR}/ with {TEST_FILE}, found {len(candidates)}")
    return candidates[0].parent

def _check_member(member: tarfile.TarInfo, target: Path, source: str, seen: set[str] | None = None) -> None:
    """Refuse a link, a device, a path escaping `target`, and anything but the CIFAR-10 binary layout: its
    directory, its batch files at their exact size, its small files (`SMALL_MEMBERS`), each once."""
    resolved = (target / member.name).resolve()
    if member.issym() or member.islnk():
        raise DataError(f"{source}: member {member.name!r} is a link; refusing to extract")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{source}: member {member.name!r} is not a regular file; refusing to extract")
    if target.resolve() not in resolved.parents and resolved != target.resolve():
        raise DataError(f"{source}: member {member.name!r} escapes the target; refusing to extract")
    if member.size > MAX_MEMBER_BYTES:
        raise DataError(f"{source}: member {member.name!r} is {member.size:,} bytes, more than any CIFAR-10 "
                        f"file ({MAX_MEMBER_BYTES:,}); refusing to extract")
    parts = Path(member.name).parts
    parts = parts[1:] if parts[:1] == (".",) else parts
    name = "/".join(parts)
    if member.isdir():
        if parts != (LAYOUT_DIR,):
            raise DataError(f"{source}: member {member.name!r} is a directory other than {LAYOUT_DIR}/; not a "
                            "CIFAR-10 binary tarball, refusing to extract")
        return
    if len(parts) != 2 or parts[0] != LAYOUT_DIR or not (parts[1] in (*TRAIN_FILES, TEST_FILE) or
                                                          parts[1] in SMALL_MEMBERS):
        raise DataError(f"{source}: member {member.name!r} is not a file of the CIFAR-10 binary layout (expected "
                        f"{LAYOUT_DIR}/ with {', '.join((*TRAIN_FILES, TEST_FILE, *SMALL_MEMBERS))}); refusing to "
                        "extract")
    if parts[1] in SMALL_MEMBERS and member.size > SMALL_MEMBERS[parts[1]]:
        raise DataError(f"{source}: member {member.name!r} is {member.size:,} bytes, expected at most "
                        f"{SMALL_MEMBERS[parts[1]]:,}; refusing to extract")
    if parts[1] not in SMALL_MEMBERS and member.size != FILE_BYTES:
        raise DataError(f"{source}: member {member.name!r} is {member.size:,} bytes, expected {FILE_BYTES:,} "
                        f"(10,000 records of {RECORD_BYTES:,}); refusing to extract")
    if seen is not None:
        if name in seen:
            raise DataError(f"{source}: member {member.name!r} appears twice; refusing to extract")
        seen.add(name)

def check_free_space(directory: Path, needed: int, doing: str) -> None:
    """`DataError` naming `directory` and the space `needed` to do `doing` when its file system has less free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DataError(f"{directory}: {free:,} bytes free, {needed:,} needed to {doing}; free space there or "
                        "stage with another work directory (work_dir, else TMPDIR)")

@contextlib.contextmanager
def no_space_is_clear(directory: Path, needed: int):
    """A full disk (ENOSPC) inside becomes a `DataError` naming `directory` and what was being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DataError(f"{directory}: no space left on its device while writing {needed:,} bytes "
                        f"({exc.strerror}); free space there or stage with another work directory (work_dir, else "
                        "TMPDIR)") from None

def _check_totals(members: int, total: int, member: tarfile.TarInfo, source: str) -> None:
    """Refuse `member`, the archive's `members`-th, when it takes the count or the bytes extracted past their cap."""
    if members > MAX_MEMBERS:
        raise DataError(f"{source}: more than {MAX_MEMBERS:,} members, the most a tarball may have (MAX_MEMBERS; the "
                        f"official CIFAR-10 tarball has 9); refused at member {member.name!r}, this is not CIFAR-10")
    if total > MAX_EXTRACTED_BYTES:
        raise DataError(f"{source}: member {member.name!r} takes the bytes extracted past {MAX_EXTRACTED_BYTES:,}, the "
                        f"most a tarball may extract to (MAX_EXTRACTED_BYTES: twice the {LAYOUT_BYTES:,} of a CIFAR-10 "
                        f"layout); refused before extracting it: a decompression bomb or not CIFAR-10")
