"""The dataset cache under concurrency and corruption: one download per digest, crashed holders, hit checks.

Fetches run in real threads and real processes against a file:// store and the moto S3 server.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sknet.data.cache import VERIFIED_MARKER, fetch
from sknet.data.layout import LAYOUT_DIR, TEST_FILE
from sknet.errors import DataError
from sknet.storage import MANIFEST, open_store
from test_stage import count_calls

S3_PREFIX = "datasets/cifar10"
REPO = Path(__file__).resolve().parent.parent

# A fetch in its own process: counts its GetObject calls, optionally waits for a go-file and slows or
# stalls its downloads, and prints a JSON line when done.
FETCHER = """
import json, logging, os, sys, time
from pathlib import Path
from sknet.data.cache import fetch
from sknet.storage import open_store

store_uri, endpoint, uri, cache, go, mode = sys.argv[1:7]
logging.basicConfig(level=logging.INFO, format="%(message)s")
store = open_store(store_uri, endpoint_url=endpoint or None)
gets = []
for method in ("get", "get_bytes"):
    original = getattr(store, method)
    def counted(*args, _original=original, _method=method, **kwargs):
        gets.append(1)
        result = _original(*args, **kwargs)
        if _method == "get" and mode == "stall":
            os.write(1, b"downloading\\n")  # one write: two download threads must not interleave their lines
            time.sleep(600)
        if _method == "get" and mode == "slow":
            time.sleep(0.3)
        return result
    setattr(store, method, counted)
print("ready", flush=True)
while go and not os.path.exists(go):
    time.sleep(0.005)
path, digest = fetch(uri, store, Path(cache), workers=2)
print(json.dumps({"pid": os.getpid(), "gets": len(gets), "path": str(path), "done": time.time()}), flush=True)
"""


def endpoint_of(store) -> str:
    client = getattr(store, "client", None)
    return client.meta.endpoint_url if client is not None else ""


def start_fetcher(tmp_path, store, uri, cache, *, go="", mode="") -> subprocess.Popen:
    script = tmp_path / "fetcher.py"
    script.write_text(FETCHER)
    proc = subprocess.Popen([sys.executable, str(script), store.uri, endpoint_of(store), uri, str(cache), go, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_two_threads_fetching_one_digest_download_it_once(store, staged, tmp_path, caplog):
    uri, digest = staged
    twin = open_store(store.uri, endpoint_url=endpoint_of(store) or None)  # its own client: calls counted apart
    first_gets, second_gets = count_calls(store, "GetObject"), count_calls(twin, "GetObject")
    downloading = threading.Event()
    original = store.get

    def slow_get(*args, **kwargs):
        downloading.set()
        time.sleep(0.3)
        return original(*args, **kwargs)

    store.get = slow_get
    results = {}
    first = threading.Thread(target=lambda: results.update(first=fetch(uri, store, tmp_path / "cache")))
    first.start()
    assert downloading.wait(30)
    with caplog.at_level("INFO", logger="sknet"):
        results["second"] = fetch(uri, twin, tmp_path / "cache")  # waits for the first
    first.join(60)
    assert results["first"] == results["second"] == (tmp_path / "cache" / digest / LAYOUT_DIR, digest)
    assert len(first_gets) >= 8 and second_gets == []
    assert f"waiting for pid {os.getpid()}" in caplog.text


def test_two_processes_fetching_one_digest_download_it_once(store, staged, tmp_path):
    uri, digest = staged
    go = tmp_path / "go"
    procs = [start_fetcher(tmp_path, store, uri, tmp_path / "cache", go=str(go), mode="slow") for _ in range(2)]
    go.touch()  # both start their fetch within milliseconds
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append({**json.loads(out.splitlines()[-1]), "stderr": err})
    downloader, waiter = sorted(outputs, key=lambda o: o["done"])
    assert downloader["gets"] >= 8 and waiter["gets"] == 0
    assert downloader["path"] == waiter["path"] == str(tmp_path / "cache" / digest / LAYOUT_DIR)
    assert f"waiting for pid {downloader['pid']}" in waiter["stderr"]


def test_a_fetch_killed_holding_the_lock_does_not_block_the_next(store, staged, tmp_path):
    """SIGKILL leaves no chance to clean up: the kernel releases the flock, the next fetch removes the debris."""
    uri, digest = staged
    cache = tmp_path / "cache"
    holder = start_fetcher(tmp_path, store, uri, cache, mode="stall")
    assert holder.stdout.readline().strip() == "downloading"
    results = {}
    follower = threading.Thread(target=lambda: results.update(fetched=fetch(uri, store, cache)), daemon=True)
    follower.start()
    follower.join(2)
    assert follower.is_alive() and list((cache / digest).glob(".partial-*"))  # waiting behind a live holder
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    follower.join(120)
    assert results["fetched"] == (cache / digest / LAYOUT_DIR, digest)
    assert (cache / digest / LAYOUT_DIR / VERIFIED_MARKER).exists()
    assert not list((cache / digest).glob(".partial-*"))


@pytest.fixture
def cached(store, staged, tmp_path):
    uri, digest = staged
    path, _ = fetch(uri, store, tmp_path / "cache")
    return uri, digest, path


def test_a_cached_file_overwritten_by_another_of_the_same_size_is_refused_naming_it(store, cached, tmp_path):
    """The issue's reproduction: data_batch_1.bin copied over test_batch.bin in the cache."""
    uri, digest, path = cached
    shutil.copyfile(path / "data_batch_1.bin", path / TEST_FILE)
    gets = count_calls(store, "GetObject")
    with pytest.raises(DataError, match=rf"{path / TEST_FILE}: content differs from the copy that was fetched.*"
                                        rf"It is not deleted automatically.*remove {tmp_path / 'cache' / digest} "
                                        r"and fetch again"):
        fetch(uri, store, tmp_path / "cache")
    assert gets == []
    assert (path / VERIFIED_MARKER).exists() and (path / TEST_FILE).exists()  # a run may be reading it


def test_after_removing_a_corrupted_copy_as_told_the_next_fetch_downloads_it_again(store, cached, tmp_path):
    uri, digest, path = cached
    shutil.copyfile(path / "data_batch_1.bin", path / TEST_FILE)
    shutil.rmtree(tmp_path / "cache" / digest)
    assert fetch(uri, store, tmp_path / "cache") == (path, digest)
    assert fetch(uri, store, tmp_path / "cache") == (path, digest)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_truncated_or_missing_cached_file_is_refused_naming_it(store, cached, tmp_path, damage):
    uri, digest, path = cached
    target = path / "data_batch_3.bin"
    if damage == "missing":
        target.unlink()
    else:
        os.truncate(target, 1000)
    expected = "missing" if damage == "missing" else "1,000 bytes"
    with pytest.raises(DataError, match=rf"{target}: {expected}, the manifest says 30,730,000"):
        fetch(uri, store, tmp_path / "cache")


def test_a_cache_record_whose_file_table_no_longer_hashes_to_the_digest_is_refused(store, cached, tmp_path):
    uri, digest, path = cached
    record_path = tmp_path / "cache" / digest / MANIFEST
    record = json.loads(record_path.read_text())
    record["files"][TEST_FILE]["size"] += 1
    record_path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=rf"{record_path}: its file table does not hash to {digest}"):
        fetch(uri, store, tmp_path / "cache")


def test_a_copy_fetched_without_a_record_is_checked_in_full_once_then_served_without_requests(
        store, cached, tmp_path):
    uri, digest, path = cached
    (tmp_path / "cache" / digest / MANIFEST).unlink()  # as an older version left it
    fetch(uri, store, tmp_path / "cache")
    assert (tmp_path / "cache" / digest / MANIFEST).exists()
    gets = count_calls(store, "GetObject")
    fetch(uri, store, tmp_path / "cache")
    assert gets == []


def test_a_copy_without_a_record_that_differs_from_the_store_is_refused(store, cached, tmp_path):
    uri, digest, path = cached
    (tmp_path / "cache" / digest / MANIFEST).unlink()
    shutil.copyfile(path / "data_batch_1.bin", path / TEST_FILE)
    with pytest.raises(DataError, match=rf"{path / TEST_FILE}: missing or different from {store.uri}/{digest}/"):
        fetch(uri, store, tmp_path / "cache")


def test_debris_of_an_unverified_copy_is_replaced_by_a_verified_one(store, staged, tmp_path):
    uri, digest = staged
    final = tmp_path / "cache" / digest / LAYOUT_DIR
    final.mkdir(parents=True)
    (final / TEST_FILE).write_bytes(b"half")  # no .verified marker: never served by a fetch
    (final.parent / ".partial-999999").mkdir()
    assert fetch(uri, store, tmp_path / "cache") == (final, digest)
    assert (final / VERIFIED_MARKER).exists() and (final / TEST_FILE).stat().st_size == 30_730_000
    assert not list(final.parent.glob(".partial-*"))
