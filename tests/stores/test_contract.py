"""The store contract: every ``Store`` implementation passes these same tests.

The ``store`` fixture (``tests/conftest.py``) runs each test on a ``LocalStore``, an
``S3Store`` on SeaweedFS, an ``S3Store`` on moto and a ``MemoryStore``. The guarantees checked are the ones
``starburst_executor/stores/base.py`` states. Race tests skip moto: its conditional writes
are check-then-act without a lock, so a race against it proves nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from starburst_executor.errors import ObjectNotFoundError, PreconditionFailedError
from starburst_executor.stores import open_store
from starburst_executor.stores.base import ObjectInfo, Store, StoredObject

SEAWEED_LIST_ORDER = (
    "SeaweedFS lists directory by directory: 'a/b' comes before 'a-c' although '-' < '/'"
)
SEAWEED_START_AFTER = (
    "SeaweedFS treats StartAfter='d/x' as 'after the directory d/x' and skips 'd/x/1'"
)

LOCAL_FILE_AND_DIR = (
    "a directory cannot be a file too: LocalStore cannot hold both 'a' and 'a/1' "
    "(S3 and SeaweedFS can)"
)


def keys_of(infos: Any) -> list[str]:
    return [info.key for info in infos]


def put_all(store: Store, keys: list[str], data: bytes = b"x") -> dict[str, str]:
    """Write many keys in parallel; returns key -> ETag."""
    with ThreadPoolExecutor(16) as pool:
        etags = list(pool.map(lambda k: store.put(k, data), keys))
    return dict(zip(keys, etags))


def skip_if_not_atomic(store_kind: str) -> None:
    if store_kind == "moto":
        pytest.skip("moto's conditional writes are check-then-act without a lock")


def test_store_implements_protocol(store: Store) -> None:
    assert isinstance(store, Store)


# -- get / put ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", bytes(range(256)) * 3, os.urandom(3 * 1024 * 1024 + 17)],
    ids=["empty", "small", "binary", "3MB"],
)
def test_put_then_get_returns_the_bytes_and_the_etag(store: Store, data: bytes) -> None:
    etag = store.put("obj", data)
    got = store.get("obj")
    assert got.data == data
    assert got.etag == etag


def test_empty_put_does_not_stall_the_next_request(store: Store) -> None:
    # botocore sends "Expect: 100-continue" even with an empty body; a server that answers
    # such a PUT at once leaves the pooled connection poisoned and the next request on it
    # stalls until the read timeout (boto/botocore#3755; SeaweedFS and MinIO show it).
    store.put("empty", b"")
    started = time.monotonic()
    store.put("next", b"1")
    store.put_if_absent("empty-claim", b"")
    store.put("after-claim", b"2")
    assert time.monotonic() - started < 3.0
    assert store.get("empty").data == b""


def test_put_replaces_the_whole_object(store: Store) -> None:
    store.put("obj", b"a much longer first body")
    store.put("obj", b"short")
    assert store.get("obj").data == b"short"


def test_get_missing_key_raises_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get("no/such/key")


def test_get_missing_key_is_also_a_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        store.get("missing")


def test_etag_changes_when_the_body_changes(store: Store) -> None:
    first = store.put("obj", b"version 1")
    second = store.put("obj", b"version 2")
    assert first != second
    assert store.get("obj").etag == second


# -- put_if_absent --------------------------------------------------------------------------


def test_put_if_absent_creates_a_missing_key(store: Store) -> None:
    etag = store.put_if_absent("claim", b"mine")
    assert store.get("claim") == StoredObject(b"mine", etag)


def test_put_if_absent_on_existing_key_fails_and_keeps_the_first_body(store: Store) -> None:
    etag = store.put_if_absent("claim", b"first")
    with pytest.raises(PreconditionFailedError):
        store.put_if_absent("claim", b"second")
    got = store.get("claim")
    assert (got.data, got.etag) == (b"first", etag)


def test_put_if_absent_fails_on_a_key_written_by_put(store: Store) -> None:
    store.put("claim", b"plain")
    with pytest.raises(PreconditionFailedError):
        store.put_if_absent("claim", b"other")


# -- put_if_match ---------------------------------------------------------------------------


def test_put_if_match_with_current_etag_replaces_and_returns_new_etag(store: Store) -> None:
    old = store.put("state", b"v1")
    new = store.put_if_match("state", b"v2", old)
    assert new != old
    got = store.get("state")
    assert (got.data, got.etag) == (b"v2", new)


def test_put_if_match_with_stale_etag_fails_and_keeps_the_object(store: Store) -> None:
    stale = store.put("state", b"v1")
    current = store.put("state", b"v2")
    with pytest.raises(PreconditionFailedError):
        store.put_if_match("state", b"v3", stale)
    got = store.get("state")
    assert (got.data, got.etag) == (b"v2", current)


def test_put_if_match_chains(store: Store) -> None:
    etag = store.put("state", b"0")
    for n in range(1, 4):
        etag = store.put_if_match("state", str(n).encode(), etag)
    assert store.get("state").data == b"3"


def test_put_if_match_on_missing_key_fails_with_precondition(store: Store) -> None:
    etag = store.put("other", b"v1")
    with pytest.raises(PreconditionFailedError):
        store.put_if_match("missing", b"v2", etag)
    with pytest.raises(ObjectNotFoundError):
        store.get("missing")


def test_put_if_match_on_deleted_key_fails_with_precondition(store: Store) -> None:
    etag = store.put("state", b"v1")
    store.delete_many(["state"])
    with pytest.raises(PreconditionFailedError):
        store.put_if_match("state", b"v2", etag)


# -- list -----------------------------------------------------------------------------------


def test_list_of_empty_store_is_empty(store: Store) -> None:
    assert list(store.list("")) == []


def test_list_yields_keys_in_ascending_order(store: Store) -> None:
    keys = ["b", "a", "c/2", "c/1", "a0", "B", "_", "z9", "z10"]
    for key in keys:
        store.put(key, b"x")
    assert keys_of(store.list("")) == sorted(keys)


def test_list_orders_keys_bytewise_across_levels(
    store: Store, store_kind: str, request: pytest.FixtureRequest
) -> None:
    if store_kind == "seaweed":
        request.applymarker(pytest.mark.xfail(reason=SEAWEED_LIST_ORDER, strict=True))
    keys = ["a/b", "a-c", "a.d", "a0", "a/z/q"]
    for key in keys:
        store.put(key, b"x")
    assert keys_of(store.list("")) == sorted(keys)  # a-c, a.d, a/b, a/z/q, a0


def test_list_filters_by_prefix(store: Store) -> None:
    for key in ["a/1", "a/2", "ab/x", "b/1", "a0"]:
        store.put(key, b"x")
    assert keys_of(store.list("a/")) == ["a/1", "a/2"]
    assert keys_of(store.list("a")) == ["a/1", "a/2", "a0", "ab/x"]
    assert keys_of(store.list("ab")) == ["ab/x"]
    assert keys_of(store.list("zz")) == []


def test_a_key_may_also_be_the_directory_of_other_keys(
    store: Store, store_kind: str, request: pytest.FixtureRequest
) -> None:
    if store_kind == "local":
        request.applymarker(pytest.mark.xfail(reason=LOCAL_FILE_AND_DIR, strict=True))
    store.put("a", b"file")
    store.put("a/1", b"under")
    store.put("b/1", b"under")
    store.put("b", b"file")
    assert keys_of(store.list("")) == ["a", "a/1", "b", "b/1"]
    assert store.get("a").data == store.get("b").data == b"file"


def test_list_start_after_is_strictly_after(store: Store) -> None:
    keys = [f"k{i}" for i in range(10)]
    for key in keys:
        store.put(key, b"x")
    assert keys_of(store.list("", start_after="k3")) == keys[4:]
    assert keys_of(store.list("", start_after="k35")) == keys[4:]  # not itself a key
    assert keys_of(store.list("", start_after="k9")) == []
    assert keys_of(store.list("", start_after="a")) == keys
    assert keys_of(store.list("k", start_after="k7")) == ["k8", "k9"]


def test_list_start_after_within_nested_keys(store: Store) -> None:
    for key in ["d/x/1", "d/x/2", "d/y/1", "d/y/2", "e/1"]:
        store.put(key, b"x")
    assert keys_of(store.list("d/", start_after="d/x/2")) == ["d/y/1", "d/y/2"]
    assert keys_of(store.list("d/", start_after="d/x/1")) == ["d/x/2", "d/y/1", "d/y/2"]
    assert keys_of(store.list("", start_after="d/y/2")) == ["e/1"]


def test_list_start_after_a_key_prefix_includes_longer_keys(
    store: Store, store_kind: str, request: pytest.FixtureRequest
) -> None:
    if store_kind == "seaweed":
        request.applymarker(pytest.mark.xfail(reason=SEAWEED_START_AFTER, strict=True))
    for key in ["d/x/1", "d/x0"]:
        store.put(key, b"x")
    assert keys_of(store.list("d/", start_after="d/x")) == ["d/x/1", "d/x0"]


def test_list_is_recursive(store: Store) -> None:
    for key in ["d/y/2", "d/x/1", "d/z", "d/x/deeper/3"]:
        store.put(key, b"x")
    assert keys_of(store.list("d/")) == ["d/x/1", "d/x/deeper/3", "d/y/2", "d/z"]
    assert keys_of(store.list("d/x")) == ["d/x/1", "d/x/deeper/3"]


def test_list_object_info_matches_what_was_written(store: Store) -> None:
    bodies = {"s/empty": b"", "s/one": b"1", "s/kb": bytes(1000)}
    etags = {key: store.put(key, body) for key, body in bodies.items()}
    now = store.now()
    infos = list(store.list("s/"))
    assert all(isinstance(info, ObjectInfo) for info in infos)
    assert {info.key: info.size for info in infos} == {k: len(b) for k, b in bodies.items()}
    assert {info.key: info.etag for info in infos} == etags
    for info in infos:
        assert abs(info.last_modified - now) < 5.0, info


def test_list_keys_are_relative_to_the_store(store: Store) -> None:
    store.put("rel/key", b"x")
    (info,) = store.list("rel/")
    assert info.key == "rel/key"
    assert store.get(info.key).data == b"x"


@pytest.mark.slow
def test_many_keys_list_across_pages_then_delete_many(store: Store) -> None:
    # 1,100 keys: more than one S3 page (1,000) and one DeleteObjects request (1,000).
    keys = [f"many/{i:05d}" for i in range(1100)]
    random.shuffle(keys)
    put_all(store, keys)
    keys.sort()
    assert keys_of(store.list("many/")) == keys
    assert keys_of(store.list("many/", start_after=keys[950])) == keys[951:]
    store.delete_many(iter(keys + ["many/missing-1", "many/missing-2"]))
    assert list(store.list("many/")) == []


# -- delete_many ----------------------------------------------------------------------------


def test_delete_many_removes_keys_and_ignores_missing_ones(store: Store) -> None:
    for key in ["a", "b", "c/d"]:
        store.put(key, b"x")
    store.delete_many(["a", "missing", "c/d", "c/missing"])
    assert keys_of(store.list("")) == ["b"]
    with pytest.raises(ObjectNotFoundError):
        store.get("a")


def test_delete_many_of_nothing_is_a_no_op(store: Store) -> None:
    store.put("a", b"x")
    store.delete_many([])
    no_keys: tuple[str, ...] = ()
    store.delete_many(k for k in no_keys)
    assert keys_of(store.list("")) == ["a"]


def test_deleted_key_can_be_created_again(store: Store) -> None:
    store.put_if_absent("claim", b"1")
    store.delete_many(["claim"])
    store.put_if_absent("claim", b"2")
    assert store.get("claim").data == b"2"


# -- now / url ------------------------------------------------------------------------------


def test_now_is_close_to_the_local_clock(store: Store) -> None:
    assert abs(store.now() - time.time()) < 3.0


def test_now_advances(store: Store) -> None:
    first = store.now()
    time.sleep(0.05)  # the thing under test: real time passes, the store's clock follows
    assert store.now() >= first


def test_url_reopens_the_same_store(store: Store, store_kind: str) -> None:
    if store_kind not in ("local", "memory"):
        pytest.skip("an s3:// URL carries no endpoint; the test servers are not the default")
    store.put("k", b"v")
    reopened = open_store(store.url)
    assert reopened.get("k").data == b"v"


# -- races (threads) ------------------------------------------------------------------------


def test_racing_put_if_absent_has_exactly_one_winner(store: Store, store_kind: str) -> None:
    skip_if_not_atomic(store_kind)
    contenders = 16
    barrier = threading.Barrier(contenders)

    def contend(i: int) -> str | None:
        barrier.wait()
        try:
            return store.put_if_absent("claim", f"writer {i}".encode())
        except PreconditionFailedError:
            return None

    with ThreadPoolExecutor(contenders) as pool:
        outcomes = list(pool.map(contend, range(contenders)))
    winners = [(i, etag) for i, etag in enumerate(outcomes) if etag is not None]
    assert len(winners) == 1, outcomes
    ((winner, etag),) = winners
    got = store.get("claim")
    assert (got.data, got.etag) == (f"writer {winner}".encode(), etag)


def test_compare_and_swap_loops_lose_no_update(store: Store, store_kind: str) -> None:
    skip_if_not_atomic(store_kind)
    threads, increments = 8, 10
    store.put("counter", b"0")
    barrier = threading.Barrier(threads)

    def increment_many(_: int) -> int:
        conflicts = 0
        barrier.wait()
        for _ in range(increments):
            while True:
                current = store.get("counter")
                try:
                    store.put_if_match("counter", str(int(current.data) + 1).encode(), current.etag)
                    break
                except PreconditionFailedError:
                    conflicts += 1
        return conflicts

    with ThreadPoolExecutor(threads) as pool:
        conflicts = sum(pool.map(increment_many, range(threads)))
    assert store.get("counter").data == str(threads * increments).encode(), f"{conflicts} conflicts"


# -- races (processes) ----------------------------------------------------------------------


def _open_in_child(spec: tuple[str, ...]) -> Store:
    if spec[0] == "local":
        from starburst_executor.stores.local import LocalStore

        return LocalStore(spec[1])
    from servers import s3_client

    from starburst_executor.stores.s3 import S3Store

    _, endpoint, bucket, prefix = spec
    return S3Store(bucket, prefix, client=s3_client(endpoint))


def _claim_in_child(
    spec: tuple[str, ...], keys: list[str], ident: int, barrier: Any, results: Any
) -> None:
    """Child process: try to create every key (in its own order); report the ones won."""
    store = _open_in_child(spec)
    order = list(keys)
    random.Random(ident).shuffle(order)
    won = []
    barrier.wait(timeout=60)
    for key in order:
        try:
            store.put_if_absent(key, f"process {ident}".encode())
            won.append(key)
        except PreconditionFailedError:
            pass
    store.close()
    results.put((ident, won))


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["local", "seaweed"], indirect=True)
def test_racing_processes_put_if_absent_one_winner_per_key(
    store: Store, store_kind: str, request: pytest.FixtureRequest
) -> None:
    if store_kind == "local":
        spec: tuple[str, ...] = ("local", str(store.root))  # type: ignore[attr-defined]
    else:
        url = urlsplit(store.url)  # s3://bucket/prefix
        endpoint = request.getfixturevalue("seaweed").endpoint_url
        spec = ("s3", endpoint, url.netloc, url.path.strip("/"))
    processes, keys = 6, [f"claims/{i:02d}" for i in range(20)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    children = [
        ctx.Process(target=_claim_in_child, args=(spec, keys, i, barrier, results))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    try:
        reports = dict(results.get(timeout=120) for _ in children)
    except queue.Empty:
        pytest.fail(f"child exit codes: {[c.exitcode for c in children]}")
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    winners: dict[str, list[int]] = {key: [] for key in keys}
    for ident, won in reports.items():
        for key in won:
            winners[key].append(ident)
    assert all(len(ids) == 1 for ids in winners.values()), winners
    for key, (ident,) in winners.items():
        assert store.get(key).data == f"process {ident}".encode()


# -- open_store -----------------------------------------------------------------------------


def test_open_store_file_url_gives_local_store(tmp_path: Path) -> None:
    from starburst_executor.stores.local import LocalStore

    opened = open_store((tmp_path / "s").as_uri())
    assert isinstance(opened, LocalStore)
    assert opened.root == tmp_path / "s"


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_open_store_plain_path_gives_local_store(tmp_path: Path, as_path: bool) -> None:
    from starburst_executor.stores.local import LocalStore

    target = tmp_path / "plain"
    opened = open_store(target if as_path else str(target))
    assert isinstance(opened, LocalStore)
    opened.put("k", b"v")
    assert (target / "k").read_bytes() == b"v"


def test_open_store_default_lives_under_starburst_home(tmp_path: Path) -> None:
    from starburst_executor.stores.local import LocalStore

    opened = open_store()
    assert isinstance(opened, LocalStore)
    assert opened.root.is_relative_to(Path(os.environ["STARBURST_HOME"]))


def test_open_store_s3_url_gives_s3_store() -> None:
    from starburst_executor.stores.s3 import S3Store

    opened = open_store("s3://bucket-name/some/prefix")
    assert isinstance(opened, S3Store)
    assert opened.url == "s3://bucket-name/some/prefix"
    opened.close()


def test_open_store_returns_a_store_as_is(tmp_path: Path) -> None:
    from starburst_executor.stores.local import LocalStore

    given = LocalStore(tmp_path / "s")
    assert open_store(given) is given


def test_open_store_memory_url_gives_the_live_store_of_that_name() -> None:
    from starburst_executor.stores.memory import MemoryStore

    first = open_store("memory://contract-shared")
    assert isinstance(first, MemoryStore)
    first.put("k", b"v")
    assert open_store(first.url) is first
    assert open_store("memory://contract-other").url == "memory://contract-other"
    with pytest.raises(ValueError, match="exists already"):
        MemoryStore("contract-shared")


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("ftp://x", "s3://"),
        ("s3:///nokey", "bucket"),
        ("file://host/x", "file:///"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, hint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(url)) as info:
        open_store(url)
    assert hint in str(info.value)


def test_open_store_rejects_non_urls() -> None:
    with pytest.raises(TypeError):
        open_store(42)  # type: ignore[arg-type]
