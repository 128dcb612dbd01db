"""Claims and leases (``_claims.py``) on the memory store, with time moved by hand.

A claim is a create-if-absent; its lease is renewed by compare-and-swap; an expired or
released claim is taken over by compare-and-swap with the next attempt number; past
``max_attempts`` the taker is told to fail the tasks instead of running them again.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from starburst_executor._claims import ClaimHandle
from starburst_executor.protocol import SessionKeys

from .fakes import Session, new_session

LEASE = 30.0
BID = "1800000000000-c0ffee-000001-1"


@pytest.fixture
def session() -> Session:
    return new_session()


def batch_keys(session: Session) -> list[str]:
    return [info.key for info in session.store.list(session.keys.batches)]


def test_exactly_one_worker_claims_a_batch(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    first = claims.try_claim(BID, "w1")
    assert first is not None
    assert (first.claim.worker, first.claim.attempt, first.claim.state) == ("w1", 1, "running")
    assert first.claim.expires == session.clock() + LEASE
    assert claims.try_claim(BID, "w2") is None


def test_racing_claims_and_takeovers_have_one_winner(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    contenders = 12
    barrier = threading.Barrier(contenders)

    def claim(i: int) -> ClaimHandle | None:
        barrier.wait()
        return claims.take_over(BID, f"w{i}")  # no claim yet: take_over claims it afresh

    with ThreadPoolExecutor(contenders) as pool:
        first = [h for h in pool.map(claim, range(contenders)) if h is not None]
    assert len(first) == 1
    session.clock.advance(LEASE + 1)  # the winner vanished: its lease ran out
    with ThreadPoolExecutor(contenders) as pool:
        second = [h for h in pool.map(claim, range(contenders)) if h is not None]
    assert len(second) == 1
    assert second[0].claim.attempt == 2


def test_renewal_extends_the_lease_from_the_store_clock(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    handle = claims.try_claim(BID, "w1")
    assert handle is not None
    session.clock.advance(LEASE * 0.9)
    renewed = claims.renew(handle)
    assert renewed is not None
    assert renewed.claim.expires == session.clock() + LEASE
    session.clock.advance(LEASE * 0.9)  # past the first lease, within the renewed one
    assert claims.take_over(BID, "w2") is None
    assert claims.scan() == []


def test_a_live_claim_is_not_taken_over_until_its_lease_expires(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    assert claims.try_claim(BID, "w1") is not None
    session.clock.advance(LEASE - 0.001)
    assert claims.take_over(BID, "w2") is None
    session.clock.advance(0.002)
    taken = claims.take_over(BID, "w2")
    assert taken is not None
    assert (taken.claim.worker, taken.claim.attempt) == ("w2", 2)
    assert taken.claim.history == ("w1 (no lease renewal: lost without a trace)",)
    assert not taken.exhausted


def test_the_holder_learns_at_its_next_renewal_that_it_lost_the_claim(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    stale = claims.try_claim(BID, "w1")
    assert stale is not None
    session.clock.advance(LEASE + 1)
    taken = claims.take_over(BID, "w2")
    assert taken is not None
    assert claims.renew(stale) is None
    claims.finish(stale)  # too late: it must not mark the new holder's run done
    assert claims.renew(taken) is not None


def test_scan_finds_expired_claims_only(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    live, lost, done = (
        "1800000000000-c0ffee-000001-1",
        "1800000000000-c0ffee-000002-1",
        ("1800000000000-c0ffee-000003-1"),
    )
    handles = {bid: claims.try_claim(bid, "w1") for bid in (live, lost, done)}
    finished = handles[done]
    assert finished is not None
    claims.finish(finished)
    assert claims.scan() == []  # nothing is older than a lease yet
    session.clock.advance(LEASE / 2)
    live_handle = handles[live]
    assert live_handle is not None
    assert claims.renew(live_handle) is not None
    session.clock.advance(LEASE / 2 + 1)
    assert claims.scan() == [lost]


def test_finished_claims_are_never_taken_over_and_are_collected_later(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    handle = claims.try_claim(BID, "w1")
    assert handle is not None
    claims.finish(handle)
    session.clock.advance(LEASE * 10)
    assert claims.take_over(BID, "w2") is None
    assert claims.try_claim(BID, "w2") is None
    assert [i.key for i in session.store.list(session.keys.claims)] == [session.keys.claim(BID)]
    session.clock.advance(claims.gc_seconds)
    assert claims.scan() == []
    assert list(session.store.list(session.keys.claims)) == []


def test_a_released_claim_is_requeued_and_taken_over_at_once(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    handle = claims.try_claim(BID, "w1")
    assert handle is not None
    assert claims.release(handle, "stopped by SIGTERM")
    (requeue,) = batch_keys(session)
    assert SessionKeys.is_requeue(requeue)
    assert SessionKeys.bid_of(requeue) == BID
    taken = claims.take_over(BID, "w2")  # no clock advance: a release does not wait a lease
    assert taken is not None
    assert taken.claim.attempt == 2
    assert taken.claim.history == ("w1 (stopped by SIGTERM)",)


def test_release_after_losing_the_claim_changes_nothing(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    stale = claims.try_claim(BID, "w1")
    assert stale is not None
    session.clock.advance(LEASE + 1)
    assert claims.take_over(BID, "w2") is not None
    assert not claims.release(stale, "late")
    assert batch_keys(session) == []  # no requeue event for a claim it no longer holds
    assert claims.take_over(BID, "w3") is None  # w2's lease is live


def test_takeovers_past_max_attempts_are_exhausted(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE, max_attempts=2)
    assert claims.try_claim(BID, "w1") is not None
    session.clock.advance(LEASE + 1)
    second = claims.take_over(BID, "w2")
    assert second is not None and not second.exhausted
    session.clock.advance(LEASE + 1)
    third = claims.take_over(BID, "w3")
    assert third is not None
    assert third.exhausted  # the caller fails the tasks with WorkerLostError
    assert third.claim.attempt == 3
    assert [h.split(" ")[0] for h in third.claim.history] == ["w1", "w2"]


def test_release_worker_releases_only_that_workers_running_claims(session: Session) -> None:
    claims = session.claims(lease_seconds=LEASE)
    mine = ["1800000000000-c0ffee-000001-1", "1800000000000-c0ffee-000002-1"]
    done_mine, theirs = "1800000000000-c0ffee-000003-1", "1800000000000-c0ffee-000004-1"
    for bid in mine:
        assert claims.try_claim(bid, "dead") is not None
    done_handle = claims.try_claim(done_mine, "dead")
    assert done_handle is not None
    claims.finish(done_handle)
    assert claims.try_claim(theirs, "alive") is not None
    released = claims.release_worker("dead", "killed by SIGKILL")
    assert sorted(released) == mine
    assert sorted(SessionKeys.bid_of(k) for k in batch_keys(session)) == mine
    for bid in mine:
        taken = claims.take_over(bid, "w2")
        assert taken is not None
        assert taken.claim.history == ("dead (killed by SIGKILL)",)
    assert claims.take_over(done_mine, "w2") is None
    assert claims.take_over(theirs, "w2") is None
