"""Stage CIFAR-10 into object storage under its manifest digest, and fetch it back into a verified cache.

Staged layout: `<dest>/<digest>/{data_batch_1.bin … test_batch.bin, batches.meta.txt, manifest.json}`,
where the digest is the sha256 of the manifest's file table. The manifest is written last, so a
prefix without one is incomplete. Staging data that is already there checks each object against the manifest
(listed size, then `Store.verify`) and uploads again only what is missing or damaged.

Cache layout: `<cache>/<digest>/cifar-10-batches-bin/` (the copy, with a `.verified` marker written only
after every file matched the manifest), `<cache>/<digest>/manifest.json` (the staged manifest plus each
file's sampled sha256, taken at fetch time) and `<cache>/<digest>.lock` (the digest's flock).

Concurrency: a fetch holds the digest's exclusive flock from its first look at the cache to its return, so
one fetch downloads and any other waits, then reuses the copy; a holder that dies releases the lock with
its last file descriptor, and the next holder removes the `.partial-*` debris it left.

In use: a copy with a valid `.verified` marker may be in use by any run that was given its path (a flow's
ranks, evaluation, export, or a user's `data.uri=<path>` after `sknet data fetch`), and there is no
reliable way to know that none is. So nothing here ever deletes, renames or overwrites a marked copy: a
corrupted one is refused with a message naming the file and how to replace it, by hand, once no run uses it.

Cache hits are checked cheaply, not in full: the recorded file table must hash to the digest, and every
file must have its manifest size and the sha256 of its first, middle and last MiB recorded at fetch time
(small files are hashed in full). That costs the same for any dataset size (18 MiB read for CIFAR-10,
against 184 MB for a full sha256) and catches what happens to a cache in practice (a file overwritten,
swapped, truncated or replaced); a flipped bit in the middle of a file is caught by the full check at fetch
time and by the store's checksums, not by a hit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sknet.data.archive import LAYOUT_BYTES, _extract, no_space_is_clear
from sknet.data.census import (
    DEFAULT_MAX_CLASS_SKEW,
    census_differences,
    check_max_class_skew,
    read_census,
    refuse_skew,
    take_census,
)
from sknet.data.download import MAX_DOWNLOAD_BYTES, _download
from sknet.data.layout import (
    TARBALL_MD5,
    layout_dir,
)
from sknet.data.manifest import dataset_manifest
from sknet.errors import DataError
from sknet.storage import (
    MANIFEST,
    IncompleteError,
    PermanentStorageError,
    StorageError,
    Store,
    join,
    publish,
    read_manifest,
    redact_url,
)

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "sknet-stage-"  # a stage's scratch directory, under its work_dir or TMPDIR


SCRATCH_OWNER = "owner.json"  # in a scratch directory: host, PID and start time of the stage using it


@dataclass(frozen=True)
class StagedDataset:
    """A staged dataset: its URI and digest, whether it is synthetic, whether this call published it (wrote
    its manifest; False: the same files were already staged under that digest), the objects of an
    already staged dataset that this call found missing or damaged and uploaded again (`repaired`), and
    the data's census (`sknet.data.census`)."""

    uri: str
    digest: str
    synthetic: bool
    published: bool
    repaired: tuple[str, ...] = ()
    census: dict | None = None

    def summary(self) -> str:
        """One line for a log: what this call did to the dataset."""
        if self.published:
            done = "staged"
        elif self.repaired:
            done = f"uploaded {', '.join(self.repaired)} again to"
        else:
            done = "already staged and intact, nothing uploaded:"
        return f"{done} {self.uri}{' (SYNTHETIC data)' if self.synthetic else ''}"

    def to_dict(self) -> dict:
        return {**asdict(self), "repaired": list(self.repaired)}


def stage(source: str, store: Store, *, expected_md5: str | None = None, work_dir: Path | None = None) -> str:
    """Publish SOURCE (URL, tarball or layout directory) to `store` and return the dataset URI."""
    return stage_dataset(source, store, expected_md5=expected_md5, work_dir=work_dir).uri


def stage_dataset(source: str, store: Store, *, expected_md5: str | None = None, work_dir: Path | None = None,
                  max_class_skew: float = DEFAULT_MAX_CLASS_SKEW, allow_skew: bool = False) -> StagedDataset:
    """Publish SOURCE (URL, tarball or layout directory) to `store`; when it is staged there already, check
    its objects and upload again those missing or damaged (see `repair`).
    A tarball must have `expected_md5` (default: the official CIFAR-10 tarball's). Before anything is
    uploaded the data's census is taken (`sknet.data.census`) and a skewed dataset refused unless `allow_skew`;
    the census goes into the manifest (a dataset staged before keeps its manifest)."""
    check_max_class_skew(max_class_skew)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="sknet-stage-") as scratch:
        with no_space_is_clear(Path(scratch), MAX_DOWNLOAD_BYTES + LAYOUT_BYTES):  # a tarball, then its layout
            directory = _materialize(source, Path(scratch), expected_md5 or TARBALL_MD5)
        manifest = dataset_manifest(directory)
        digest = manifest["digest"]
        layout = layout_dir(directory)  # verified by dataset_manifest
        census = take_census(layout, max_class_skew=max_class_skew, allow_skew=allow_skew)
        refuse_skew(census, redact_url(source))
        staged = StagedDataset(f"{store.uri}/{digest}", digest, bool(manifest["synthetic"]), False, census=census)
        files = {name: layout / name for name in manifest["files"]}
        if (already := _staged_manifest(store, digest)).get("files") == manifest["files"]:
            staged = replace(staged, repaired=tuple(repair(store, digest, manifest["files"], files)))
            _correct_census(store, digest, already, census)
            log.info("%s", staged.summary())
            return staged
        metadata = {**{k: v for k, v in manifest.items() if k != "files"}, "census": census}
        publish(store, digest, files, metadata=metadata, progress=log.info, file_facts=manifest["files"])
        staged = replace(staged, published=True)
        log.info("%s", staged.summary())
        return staged


def _correct_census(store: Store, digest: str, staged: dict, census: dict) -> None:
    """Rewrite the staged manifest (`staged`)'s census when it is not the data's (metadata the digest does not
    cover: a bucket is input). The data is unchanged, so nothing else is written and no event follows."""
    recorded = read_census(staged)
    if recorded is None or not census_differences(recorded, census):
        return  # agrees; or staged before the census, or not shaped as one: the manifest is kept as it is
    log.warning("%s/%s/%s: its census is not the data's; rewritten from the files", store.uri, digest, MANIFEST)
    store.put_bytes(json.dumps({**staged, "census": census}, indent=2, sort_keys=True).encode(), join(digest, MANIFEST))


def _staged_manifest(store: Store, digest: str) -> dict:
    """The manifest under `digest`; {} without one, or with one that cannot be read (publishing again writes it
    anew)."""
    try:
        manifest = read_manifest(store, digest)
    except IncompleteError:
        return {}
    except PermanentStorageError as exc:
        log.warning("%s; publishing the dataset again", exc)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def repair(store: Store, digest: str, entries: dict, files: dict[str, Path]) -> list[str]:
    """Check each object of the dataset staged under `digest` against its manifest `entries` and upload
    `files[name]` again where the object is missing or damaged; return those names, sorted.

    Sizes come from one listing. Content is checked by `Store.verify` with the local file at hand, the
    cheapest check each store has: on S3 the SHA256 checksum S3 keeps with the object, read by a HEAD (a
    multipart object's composite checksum is recomputed from the local file; a store keeping none compares
    its MD5 ETag, else downloads); on `file://` the object is hashed. Every upload is verified the same way.
    An object not in the manifest is left alone, with a warning: `sknet data verify` refuses the dataset
    until it is removed.
    """
    listed = {o.key[len(digest) + 1:]: o.size for o in store.list(digest + "/")}
    for name in sorted(set(listed) - set(entries) - {MANIFEST}):
        log.warning("%s/%s/%s: not in the manifest; left in place, remove it by hand", store.uri, digest, name)
    damaged = []
    for name, entry in sorted(entries.items()):
        if problem := _object_problem(store, join(digest, name), entry, listed.get(name), files[name]):
            log.warning("%s/%s/%s: %s; uploading it again", store.uri, digest, name, problem)
            store.put(files[name], join(digest, name))
            store.verify(join(digest, name), entry["size"], entry["sha256"], local=files[name])
            damaged.append(name)
    return damaged


def _object_problem(store: Store, key: str, entry: dict, size: int | None, local: Path) -> str | None:
    """What is wrong with the object at `key` (listed with `size`, None: not listed), or None if it matches."""
    if size is None:
        return "missing"
    if size != entry["size"]:
        return f"{size:,} bytes, the manifest says {entry['size']:,}"
    try:
        store.verify(key, entry["size"], entry["sha256"], local=local)
    except PermanentStorageError:
        raise
    except StorageError as exc:  # a differing checksum, or an object that could not be checked: upload it
        return str(exc)
    return None


def staged_datasets(store: Store) -> list[dict]:
    """The complete datasets under `store` (a `…/datasets/cifar10` prefix): uri, digest, synthetic."""
    found = []
    for obj in store.list():
        digest, _, name = obj.key.partition("/")
        if name == MANIFEST:
            manifest = read_manifest(store, digest)
            found.append({"uri": f"{store.uri}/{digest}", "digest": digest, "synthetic": bool(manifest["synthetic"])})
    return found


def _materialize(source: str, scratch: Path, expected_md5: str) -> Path:
    """The layout directory of SOURCE, downloaded and extracted in `scratch` (claimed first: `_claim_scratch`)."""
    _claim_scratch(scratch)
    if source.startswith(("http://", "https://")):
        tarball = scratch / "download.tar.gz"
        _download(source, tarball)
        return _extract(tarball, scratch / "extracted", expected_md5, redact_url(source))
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file():
        return _extract(path, scratch / "extracted", expected_md5, source)
    raise DataError(f"--source {source}: no such file or directory; expected a URL, a tarball or a layout directory")


def _claim_scratch(scratch: Path) -> None:
    """Record this stage as the owner of `scratch` (host, PID and start time: PIDs are reused), then remove the
    scratch that stages killed before they could remove theirs: a sibling whose recorded owner is gone."""
    import psutil

    me = psutil.Process()
    owner = {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}
    (scratch / SCRATCH_OWNER).write_text(json.dumps(owner) + "\n")
    for other in sorted(scratch.parent.glob(f"{SCRATCH_PREFIX}*")):
        if other != scratch and _owner_is_gone(other):
            shutil.rmtree(other, ignore_errors=True)
            log.info("removed %s, the scratch of a stage that is no longer running", other)


def _owner_is_gone(scratch: Path) -> bool:
    """Whether the stage recorded as `scratch`'s owner ran on this host and is no longer running. A scratch
    without a record (being created, or older than records), another user's, or another host's is kept."""
    import psutil

    try:
        if scratch.is_symlink() or scratch.stat().st_uid != os.getuid():
            return False
        owner = json.loads((scratch / SCRATCH_OWNER).read_text())
        host, pid, started = owner["host"], int(owner["pid"]), float(owner["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(pid).create_time() - started) >= 0.01  # a later process with a reused PID
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to judge
        return False
