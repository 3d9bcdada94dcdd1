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

import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sknet.data.census import (
    DEFAULT_MAX_CLASS_SKEW,
    census_differences,
    check_max_class_skew,
    read_census,
    refuse_skew,
    take_census,
)
from sknet.data.layout import (
    FILE_BYTES,
    LAYOUT_DIR,
    META_FILE,
    RECORD_BYTES,
    SYNTHETIC_MARKER,
    TARBALL_MD5,
    TEST_FILE,
    TRAIN_FILES,
    check_batch_file,
    layout_dir,
    verify_layout,
)
from sknet.errors import DataError
from sknet.storage import (
    MANIFEST,
    IncompleteError,
    PermanentStorageError,
    StorageError,
    Store,
    file_hash,
    join,
    publish,
    read_manifest,
    redact_url,
    sha256_file,
    write_atomic,
)
from sknet.storage.locks import exclusive_lock

log = logging.getLogger(__name__)

VERIFIED_MARKER = ".verified"
FORMAT = "cifar10-binary"
DATASETS_PREFIX = "datasets/cifar10"  # where a store keeps its staged datasets: <store>/datasets/cifar10/<digest>
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
MAX_MEMBER_BYTES = 2 * FILE_BYTES  # twice a batch file: a tarball member beyond it is not CIFAR-10
LAYOUT_BYTES = (len(TRAIN_FILES) + 1) * FILE_BYTES  # 184,380,000: the six batch files (batches.meta.txt: 61 more)
MAX_EXTRACTED_BYTES = 2 * LAYOUT_BYTES  # a tarball extracting to more is a decompression bomb, not CIFAR-10
MAX_MEMBERS = 100  # the official tarball has 9: its directory, the 6 batches, batches.meta.txt, readme.html
MAX_DOWNLOAD_BYTES = 2 * 170_052_171  # twice the official cifar-10-binary.tar.gz (an uncompressed tar fits too)
DOWNLOAD_DEADLINE_SECONDS = 3600.0  # a whole download, first byte to last: the official tarball at ≥ 47 kB/s
SCRATCH_PREFIX = "sknet-stage-"  # a stage's scratch directory, under its work_dir or TMPDIR
SCRATCH_OWNER = "owner.json"  # in a scratch directory: host, PID and start time of the stage using it
SAMPLE_BYTES = 2**20  # a cache hit hashes the first, middle and last MiB of each file
DATASET_FILES = frozenset([*TRAIN_FILES, TEST_FILE, META_FILE, SYNTHETIC_MARKER])  # all a manifest may name
# What a CIFAR-10 binary tarball may hold, under cifar-10-batches-bin/: each batch at its exact size, and the small
# files at most this many bytes (the official batches.meta.txt has 61, readme.html 88)
SMALL_MEMBERS = {META_FILE: 4096, "readme.html": 65536, SYNTHETIC_MARKER: 65536}


def split_dataset_uri(uri: str) -> tuple[str, str]:
    """`<store uri>/<digest>` → (store uri, digest); the digest must be 64 lowercase hex characters."""
    store_uri, _, digest = uri.rstrip("/").rpartition("/")
    if not store_uri or not DIGEST_PATTERN.fullmatch(digest):
        raise DataError(f"dataset URI {uri!r}: expected <store>/<digest>, the digest 64 lowercase hex "
                        f"characters (as printed by `sknet data stage`), got {digest!r}")
    return store_uri, digest


def manifest_digest(files: dict) -> str:
    """The dataset digest: sha256 of the manifest's file table in canonical JSON."""
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_dataset_manifest(store: Store, digest: str) -> dict:
    """The manifest of a staged dataset, refused unless it names only layout files and hashes to `digest`.

    A bucket is not trusted: a manifest naming `../x` would otherwise be written outside the cache.
    """
    manifest = read_manifest(store, digest)
    where = f"{store.uri}/{digest}/{MANIFEST}"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise DataError(f"{where}: no file table; expected a manifest written by `sknet data stage`")
    for name in sorted(files, key=str):
        if name not in DATASET_FILES:
            raise DataError(f"{where}: names {name!r}, which is not a CIFAR-10 layout file "
                            f"(expected only {', '.join(sorted(DATASET_FILES))}); refusing to fetch")
        entry = files[name]
        if not (isinstance(entry, dict) and type(entry.get("size")) is int and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and DIGEST_PATTERN.fullmatch(entry["sha256"])):
            raise DataError(f"{where}: entry {name!r} is {entry!r}; expected a size in bytes and a sha256")
    if manifest_digest(files) != digest:
        raise DataError(f"{where}: its file table hashes to {manifest_digest(files)}, not to the digest in "
                        f"the URI; the manifest was altered after staging")
    return manifest


def dataset_manifest(directory: Path) -> dict:
    """File table (size, sha256, records) of a verified local layout, and its digest."""
    report = verify_layout(directory)
    names = [*TRAIN_FILES, TEST_FILE, META_FILE] + ([SYNTHETIC_MARKER] if report.synthetic else [])
    files = {}
    for name in names:
        path = report.path / name
        entry = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        if name.endswith(".bin"):
            entry["records"] = entry["size"] // RECORD_BYTES
        files[name] = entry
    digest = manifest_digest(files)
    return {"format": FORMAT, "digest": digest, "synthetic": report.synthetic, "files": files}


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


def _download(url: str, target: Path) -> None:
    """Download `url` within `MAX_DOWNLOAD_BYTES` and `DOWNLOAD_DEADLINE_SECONDS`; logs and errors show it without
    its signature or token (a presigned URL is a secret)."""
    shown = redact_url(url)
    _refuse_unquoted(url, shown)
    log.info("downloading %s", shown)
    with _Deadline(DOWNLOAD_DEADLINE_SECONDS) as deadline:
        try:
            _copy_url(url, target, shown, deadline)
        except (OSError, http.client.HTTPException) as exc:  # HTTPError, URLError, timeouts, a malformed answer
            if deadline.expired.is_set():
                raise _past_deadline(shown, deadline) from None
            raise _download_error(shown, exc) from None


def _refuse_unquoted(url: str, shown: str) -> None:
    """Refuse a URL with a space or a control character before any request (urllib would raise `InvalidURL` quoting
    the URL in full, signature and all)."""
    if found := re.search(r"[\x00-\x20\x7f]", url):
        what = "a space" if found.group() == " " else f"the control character {found.group()!r}"
        raise DataError(f"{shown}: the URL has {what} at character {found.start() + 1}; a URL must be "
                        "percent-encoded (a space is %20): copy it again, whole, or encode it")


def _copy_url(url: str, target: Path, shown: str, deadline: _Deadline) -> None:
    """Copy the body to `target`, refused past `MAX_DOWNLOAD_BYTES`, at the deadline or short of its Content-Length."""
    with deadline.opener().open(url, timeout=60) as response, open(target, "wb") as out:
        total = response.length or 0  # http.client's reading of Content-Length (None: absent, invalid or chunked)
        if total > MAX_DOWNLOAD_BYTES:
            raise _too_big(shown, f"its Content-Length is {total:,} bytes")
        done, reported = 0, 0
        while block := response.read1(2**20):  # what has arrived: a deadline shutdown ends a read at once
            out.write(block)
            done += len(block)
            if done > MAX_DOWNLOAD_BYTES:
                raise _too_big(shown, f"{done:,} bytes received and more coming")
            if total and (tenth := 10 * done // total) > reported:  # every 10 %
                reported = tenth
                log.info("downloaded %d/%d MB (%d%%)", done // 2**20, total // 2**20, 100 * done // total)
    if deadline.expired.is_set():
        raise _past_deadline(shown, deadline)
    if done < total:
        raise DataError(f"{shown}: got {done:,} of {total:,} bytes (its Content-Length) before the server closed the "
                        f"connection: the download is incomplete; try again")
    log.info("downloaded %s: %s bytes", shown, f"{done:,}")


def _too_big(shown: str, what: str) -> DataError:
    return DataError(f"{shown}: {what}, more than the {MAX_DOWNLOAD_BYTES:,} bytes a download may have "
                     f"(MAX_DOWNLOAD_BYTES: twice the official CIFAR-10 tarball); refusing, this is not CIFAR-10")


def _past_deadline(shown: str, deadline: _Deadline) -> DataError:
    return DataError(f"{shown}: not downloaded within {deadline.seconds:g} s (DOWNLOAD_DEADLINE_SECONDS, the deadline "
                     f"of a whole download): the server is stalled or too slow; download the tarball another way "
                     f"and stage the file")


def _download_error(shown: str, exc: Exception) -> DataError:
    """The error of a failed download: the server's answer was not HTTP, or the network failed."""
    if isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, ConnectionError):
        line = exc.line.rstrip()[:100]
        return DataError(f"{shown}: the server's answer is not HTTP (status line {line!r}); check the URL")
    if isinstance(exc, http.client.HTTPException) and not isinstance(exc, http.client.InvalidURL):
        return DataError(f"{shown}: the server's answer is malformed ({type(exc).__name__}: {exc}); check the URL")
    return DataError(f"{shown}: download failed ({exc}); check the URL and this machine's network access")


class _Deadline:
    """A whole download's deadline (a socket timeout bounds each read, not their sum: a server dripping a byte
    at a time never trips it). When it passes, every connection the download opened is shut down, which ends
    a blocked read at once, and `expired` is set."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                _shut_down(sock)

    def watch(self, sock: socket.socket) -> socket.socket:
        """Keep a duplicate of a new connection's socket (TLS detaches the original) to shut it down in time."""
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired.is_set():
                _shut_down(sock)
        return sock

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's usual opener (proxies, redirects, TLS), whose every connection this deadline watches."""
        return urllib.request.build_opener(_WatchedHandler(self))


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class _WatchedHandler(urllib.request.HTTPSHandler, urllib.request.HTTPHandler):
    """urllib's HTTP and HTTPS handler, with each connection's socket given to `deadline` as it is created."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: type, req: urllib.request.Request, **kwargs: object) -> http.client.HTTPResponse:
        def connection(host: str, **options: object) -> http.client.HTTPConnection:
            conn = http_class(host, **options)
            create = conn._create_connection  # socket.create_connection: the hook http.client keeps for it
            conn._create_connection = lambda *args, **kw: self.deadline.watch(create(*args, **kw))
            return conn

        return super().do_open(connection, req, **kwargs)


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


def fetch(uri: str, store: Store, cache: Path, *, workers: int = 4) -> tuple[Path, str]:
    """Local verified copy of a staged dataset: (layout directory, digest). No request at all on a cache hit.

    Everything happens under the digest's lock (`<cache>/<digest>.lock`): of two fetches of one digest, in
    threads or processes, one downloads and the other waits, then finds the verified copy and reuses it. A
    copy with a valid `.verified` marker is never deleted or replaced (see the module docstring); a hit that
    fails its checks is refused with a `DataError` naming the file.
    """
    _, digest = split_dataset_uri(uri)
    final = Path(cache) / digest / LAYOUT_DIR

    def waiting(holder: str) -> None:
        log.info("dataset %s: waiting for %s, which is fetching it into %s", digest[:12], holder, cache)

    with exclusive_lock(Path(cache) / f"{digest}.lock", on_wait=waiting):
        if _marked_verified(final, digest):
            check_cached_copy(final, digest, store)
            log.info("dataset %s: verified copy in cache %s", digest[:12], final)
            return final, digest
        _download_copy(final, digest, store, workers)
    return final, digest


def _marked_verified(final: Path, digest: str) -> bool:
    marker = final / VERIFIED_MARKER
    return marker.is_file() and marker.read_text().strip() == digest


def _download_copy(final: Path, digest: str, store: Store, workers: int) -> None:
    """Download, check and record every file in a partial directory, then rename it to `final`.

    Called under the digest lock with no verified copy in place, so what is there is debris: a `.partial-*`
    directory of a fetch that was killed, or a `final` without a valid marker (never served: the marker is
    written before the rename that gives a copy its name). Both are removed.
    """
    manifest = read_dataset_manifest(store, digest)
    _check_listing(store, digest, manifest)
    for debris in [*final.parent.glob(".partial-*"), *([final] if final.exists() else [])]:
        if debris.is_dir():
            shutil.rmtree(debris)
        else:
            debris.unlink()
    partial = final.parent / f".partial-{os.getpid()}"
    partial.mkdir(parents=True)
    try:
        def get_one(name: str) -> None:
            store.get(join(digest, name), partial / name)
            check_fetched_file(partial / name, name, manifest["files"][name], f"{store.uri}/{digest}/{name}")
            log.info("fetched %s (%s bytes)", name, f"{manifest['files'][name]['size']:,}")

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(get_one, sorted(manifest["files"])))
        _write_cache_record(final.parent / MANIFEST, manifest, partial)
        (partial / VERIFIED_MARKER).write_text(digest + "\n")
        partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def sampled_sha256(path: Path, sample_bytes: int = SAMPLE_BYTES) -> str:
    """sha256 of a file's first, middle and last `sample_bytes` (the whole file when it is not larger)."""
    size = path.stat().st_size
    if size <= 3 * sample_bytes:
        return sha256_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for offset in (0, (size - sample_bytes) // 2, size - sample_bytes):
            stream.seek(offset)
            digest.update(stream.read(sample_bytes))
    return digest.hexdigest()


def _write_cache_record(path: Path, manifest: dict, layout: Path) -> None:
    """The staged manifest plus each file's `sampled_sha256`, taken from files just checked in full."""
    sampled = {name: sampled_sha256(layout / name) for name in sorted(manifest["files"])}
    record = {**manifest, "cache": {"sample_bytes": SAMPLE_BYTES, "sampled_sha256": sampled}}
    write_atomic(path, lambda partial: partial.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n"))


def check_cached_copy(final: Path, digest: str, store: Store) -> None:
    """A cache hit's checks: the recorded file table hashes to `digest`; each file has its size and sampled sha256.

    A copy without a record (fetched by an older version) is checked in full against the store's manifest
    once, its only requests, and the record is written. A failed check raises a `DataError` naming the
    file; the copy is left in place (a run may be reading it) and the message says how to replace it.
    """
    record_path = final.parent / MANIFEST
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        _adopt_unrecorded_copy(final, digest, store)
        return
    except ValueError as exc:
        raise _bad_copy(final, f"{record_path}: not valid JSON ({exc})") from None
    files, cache = record.get("files"), record.get("cache") or {}
    if not isinstance(files, dict) or manifest_digest(files) != digest:
        raise _bad_copy(final, f"{record_path}: its file table does not hash to {digest}")
    sample_bytes, sampled = cache.get("sample_bytes", SAMPLE_BYTES), cache.get("sampled_sha256", {})
    for name, entry in sorted(files.items()):
        path = final / name
        size = path.stat().st_size if path.is_file() else None
        if size != entry["size"]:
            raise _bad_copy(final, f"{path}: {'missing' if size is None else f'{size:,} bytes'}, "
                                   f"the manifest says {entry['size']:,}")
        if sampled_sha256(path, sample_bytes) != sampled.get(name):
            raise _bad_copy(final, f"{path}: content differs from the copy that was fetched and verified "
                                   f"(sha256 of its first, middle and last {sample_bytes:,} bytes)")


def _adopt_unrecorded_copy(final: Path, digest: str, store: Store) -> None:
    manifest = read_dataset_manifest(store, digest)
    for name, entry in sorted(manifest["files"].items()):
        path = final / name
        if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise _bad_copy(final, f"{path}: missing or different from {store.uri}/{digest}/{name}")
    _write_cache_record(final.parent / MANIFEST, manifest, final)
    log.info("dataset %s: cached copy %s checked in full and recorded", digest[:12], final)


def _bad_copy(final: Path, what: str) -> DataError:
    return DataError(f"{what}: the cached dataset copy is corrupted and is refused. It is not deleted "
                     f"automatically, because a run may be reading it: once no run uses it, remove "
                     f"{final.parent} and fetch again (or fetch into another cache directory)")


def _check_listing(store: Store, digest: str, manifest: dict) -> None:
    listed = {o.key[len(digest) + 1:]: o.size for o in store.list(digest + "/")}
    listed.pop(MANIFEST, None)
    expected = {name: entry["size"] for name, entry in manifest["files"].items()}
    for name in sorted(set(expected) - set(listed)):
        raise DataError(f"{store.uri}/{digest}/{name}: listed in the manifest but missing from the store")
    for name in sorted(set(listed) - set(expected)):
        raise DataError(f"{store.uri}/{digest}/{name}: extra object not in the manifest")
    for name, size in sorted(listed.items()):
        if size != expected[name]:
            raise DataError(f"{store.uri}/{digest}/{name}: {size:,} bytes in the store, manifest says "
                            f"{expected[name]:,}")


def check_fetched_file(path: Path, name: str, entry: dict, where: str) -> None:
    """A fetched file against its manifest `entry`: size, sha256, and a .bin's records; errors name `where`."""
    size = path.stat().st_size
    if size != entry["size"]:
        raise DataError(f"{where}: {size:,} bytes fetched, manifest says {entry['size']:,}")
    if sha256_file(path) != entry["sha256"]:
        raise DataError(f"{where}: sha256 differs from the manifest (corrupted object)")
    if name.endswith(".bin"):
        check_batch_file(path)


def verify_remote(uri: str, store: Store) -> dict:
    """Check a staged dataset in place: manifest present, object set and sizes, stored checksums."""
    _, digest = split_dataset_uri(uri)
    manifest = read_dataset_manifest(store, digest)
    _check_listing(store, digest, manifest)
    for name, entry in sorted(manifest["files"].items()):
        store.verify(join(digest, name), entry["size"], entry["sha256"])
    return {"uri": uri, "digest": digest, "files": len(manifest["files"]), "synthetic": manifest.get("synthetic")}
