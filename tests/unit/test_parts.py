"""Large call arguments are pickled and held once (``_parts.SharedParts``, issue 11 item 5):
twenty calls sharing one 20 MB argument used to hold twenty pickled copies."""

from __future__ import annotations

import gc
import os
import pickle

from starburst_executor._parts import LargePart, SharedParts, part_bytes, part_digest
from starburst_executor._session import INLINE_PART_MAX
from starburst_executor.protocol import digest

BIG = 2 * INLINE_PART_MAX


def test_calls_sharing_a_large_argument_share_one_pickled_copy() -> None:
    parts = SharedParts(INLINE_PART_MAX)
    blob = os.urandom(BIG)
    calls = [parts.call_parts(len, (blob,), {}) for _ in range(20)]
    first = calls[0]["args"][0]
    assert isinstance(first, LargePart)
    assert all(call["args"][0] is first for call in calls)
    assert pickle.loads(part_bytes(first)) == blob
    assert part_digest(first) == digest(part_bytes(first))
    assert len(parts) == 1


def test_equal_mutable_arguments_are_pickled_each_time_but_held_once() -> None:
    parts = SharedParts(INLINE_PART_MAX)
    data = bytearray(os.urandom(BIG))
    a = parts.part(data, "argument 1")
    data[0] ^= 0xFF  # a mutation after submit must not reach the first call
    b = parts.part(data, "argument 1")
    c = parts.part(data, "argument 1")
    assert isinstance(a, LargePart) and isinstance(b, LargePart)
    assert pickle.loads(part_bytes(a))[0] != pickle.loads(part_bytes(b))[0]
    assert b is c  # same content: one copy


def test_small_parts_stay_plain_bytes_and_large_ones_go_with_their_calls() -> None:
    parts = SharedParts(INLINE_PART_MAX)
    call = parts.call_parts(len, (b"small",), {"big": os.urandom(BIG)})
    assert isinstance(call["args"][0], bytes)
    assert isinstance(call["kwargs"]["big"], LargePart)
    assert len(parts) == 1
    del call
    gc.collect()
    assert len(parts) == 0  # nothing held once no queued call refers to it
