"""``CountingStore``: each store call counted as the S3 requests S3Store makes for it."""

from __future__ import annotations

import itertools

import pytest

from starburst_executor.errors import ObjectNotFoundError, PreconditionFailedError
from starburst_executor.protocol import Codec, UsageRecord
from starburst_executor.stores.counting import (
    CountingStore,
    RequestCounts,
    count_requests,
    counter_of,
    request_cost,
)
from starburst_executor.stores.memory import MemoryStore
from starburst_executor.stores.outage import OutageTolerantStore, tolerate_outages, unwrapped


def counting() -> CountingStore:
    return CountingStore(MemoryStore())


def test_each_write_is_one_put_won_or_lost() -> None:
    store = counting()
    etag = store.put("a", b"1")
    store.put_if_absent("b", b"1")
    with pytest.raises(PreconditionFailedError):
        store.put_if_absent("b", b"2")  # a 412 is billed like a success
    store.put_if_match("a", b"2", etag)
    with pytest.raises(PreconditionFailedError):
        store.put_if_match("a", b"3", etag)
    assert store.counts() == RequestCounts(puts=5)


def test_each_read_is_one_get_found_or_not() -> None:
    store = counting()
    store.put("a", b"1")
    store.get("a")
    with pytest.raises(ObjectNotFoundError):
        store.get("missing")
    assert store.counts() == RequestCounts(gets=2, puts=1)


@pytest.mark.parametrize(
    ("keys", "read", "pages"),
    [
        (0, None, 1),  # an empty listing is still a request
        (1, None, 1),
        (1000, None, 1),  # exactly one full page: S3 says it is not truncated
        (1001, None, 2),
        (2500, None, 3),
        (2500, 1000, 1),  # stopping at the page's end fetches nothing more
        (2500, 1001, 2),
        (2500, 0, 0),  # a listing never read makes no request
    ],
)
def test_a_listing_is_one_list_per_page_read(keys: int, read: int | None, pages: int) -> None:
    inner = MemoryStore()
    for i in range(keys):
        inner.put(f"p/{i:05d}", b"")
    store = CountingStore(inner)
    listing = store.list("p/")
    got = list(listing) if read is None else list(itertools.islice(listing, read))
    assert len(got) == (keys if read is None else min(read, keys))
    assert store.counts() == RequestCounts(lists=pages)


def test_deletes_are_free_batches_of_a_thousand() -> None:
    store = counting()
    store.delete_many([])
    assert store.counts() == RequestCounts()
    store.delete_many(f"k{i}" for i in range(2001))
    assert store.counts() == RequestCounts(deletes=3)
    assert store.counts().cost() == 0.0


def test_the_clock_costs_a_list_only_before_any_answer() -> None:
    store = counting()
    store.now()  # S3Store probes the server's Date with a one-key listing
    store.now()
    store.put("a", b"")
    assert store.counts() == RequestCounts(puts=1, lists=1)
    answered = counting()
    answered.put("a", b"")
    answered.now()
    assert answered.counts() == RequestCounts(puts=1)


def test_classes_and_prices() -> None:
    counts = RequestCounts(gets=1382, puts=2000, lists=719, deletes=5)
    assert (counts.class_a, counts.class_b, counts.total) == (2719, 1382, 4106)
    assert counts.cost() == pytest.approx(2719 * 0.005 / 1000 + 1382 * 0.0004 / 1000)
    assert counts.cost("eu-central-1") > counts.cost("us-east-1")
    assert counts.cost("xx-nowhere-1") == counts.cost("us-east-1")
    assert request_cost(1000, 1000) == pytest.approx(0.0054)
    assert counts + RequestCounts(gets=1) == RequestCounts(1383, 2000, 719, 5)


def test_wrappers_find_and_skip_the_counter() -> None:
    bare = MemoryStore()
    client = tolerate_outages(CountingStore(bare))
    assert counter_of(client) is client.inner
    assert unwrapped(client) is bare  # "which kind of store" still sees the memory store
    assert counter_of(bare) is None
    # A worker handed the client's wrapped store counts apart from the client, behind the
    # same outage policy (its clock and outage state).
    worker = count_requests(client)
    assert isinstance(worker, OutageTolerantStore) and worker.policy is client.policy
    mine = counter_of(worker)
    assert mine is not None and mine.inner is bare and mine is not client.inner
    worker.put("x", b"")
    assert mine.counts() == RequestCounts(puts=1)
    assert counter_of(client) is not None
    assert counter_of(client).counts() == RequestCounts()  # type: ignore[union-attr]
    assert isinstance(count_requests(bare), CountingStore)


def test_the_usage_record_round_trips_and_refuses_damage() -> None:
    from starburst_executor.errors import CorruptRecordError

    codec = Codec(b"k" * 32)
    key = "sessions/s/usage/w"
    record = UsageRecord("w", "worker", RequestCounts(1, 2, 3, 4), 12.5)
    assert UsageRecord.decode(codec, record.encode(codec, key), key) == record
    bad = codec.encode_json({"writer": "w", "role": "worker", "requests": {"gets": "x"}}, key)
    with pytest.raises(CorruptRecordError):
        UsageRecord.decode(codec, bad, key)
