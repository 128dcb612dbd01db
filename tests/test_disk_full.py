"""Disk full on the directory store (issue 10, item 5): a failed write leaves no temporary
file behind, and the caller's error names the full disk and the key's path.

Three ways to fill a disk: a fake write that fails with ``ENOSPC`` halfway (in-process, any
platform), ``RLIMIT_FSIZE`` in a child process (the kernel truncates the write and says
``EFBIG``; no root needed), and a real 5 MB tmpfs for the end-to-end run (root only; CI runs
as root).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import chaos_tasks
import pytest

import starburst_executor.stores.local as local_module
from starburst_executor import BrokenStarburstExecutor, StarburstExecutor, StoreConfigError
from starburst_executor.stores.local import LocalStore

_MB = 1 << 20


def _temp_files(root: Path) -> list[Path]:
    return [p for p in (root / ".starburst-internal" / "tmp").iterdir() if p.is_file()]


class _FillingFile:
    """A binary file that takes half of what it is given, then fails as a full disk does."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new file the store writes fails halfway with ENOSPC (lock files still open)."""
    real_open = open

    def filling_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        return _FillingFile(fh) if mode == "wb" else fh

    monkeypatch.setattr(local_module, "open", filling_open, raising=False)


_OPS: dict[str, Callable[[LocalStore, str, str], object]] = {
    "put": lambda s, k, _etag: s.put(k, b"x" * _MB),
    "put_if_absent": lambda s, k, _etag: s.put_if_absent(k + "-new", b"x" * _MB),
    "put_if_match": lambda s, k, etag: s.put_if_match(k, b"x" * _MB, etag),
}


@pytest.mark.parametrize("op", sorted(_OPS))
def test_a_write_to_a_full_disk_leaves_no_temp_file_and_names_the_path(
    op: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = LocalStore(tmp_path / "store")
    etag = store.put("a/key", b"before")
    request.getfixturevalue("full_disk")  # from here on, the disk is full

    with pytest.raises(StoreConfigError) as caught:
        _OPS[op](store, "a/key", etag)

    message = str(caught.value)
    assert "no space left" in message
    assert str(tmp_path / "store" / "a" / "key") in message
    assert _temp_files(tmp_path / "store") == []
    assert store.get("a/key").data == b"before"  # the object written before is intact


_FSIZE_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from starburst_executor.errors import StoreConfigError
    from starburst_executor.stores.local import LocalStore

    store = LocalStore(sys.argv[1])
    etag = store.put("k", b"small")
    # Writes past 64 KiB fail with EFBIG (SIGXFSZ would kill the process first: ignore it).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    big = b"x" * (1 << 20)
    messages = []
    for op in (
        lambda: store.put("k", big),
        lambda: store.put_if_absent("new", big),
        lambda: store.put_if_match("k", big, etag),
    ):
        try:
            op()
            messages.append("no error")
        except StoreConfigError as exc:
            messages.append(str(exc))
    print(json.dumps(messages))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_write_past_the_file_size_limit_leaves_no_temp_file(tmp_path: Path) -> None:
    """The kernel's own partial write (64 KiB of 1 MB, then EFBIG), in a child process."""
    root = tmp_path / "store"
    out = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    messages = json.loads(out.stdout)
    assert len(messages) == 3
    for message, key in zip(messages, ["k", "new", "k"], strict=True):
        assert "file too large" in message, message
        assert str(root / key) in message, message
    assert _temp_files(root) == []
    assert LocalStore(root).get("k").data == b"small"


# -- end to end, on a real full disk -----------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 5 MB tmpfs (root only: skipped elsewhere; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


@pytest.mark.slow
def test_results_that_fill_the_disk_fail_their_futures_with_the_full_disk(
    small_disk: Path,
) -> None:
    """2 MB results on a 5 MB disk: the first fits; those that do not fail with the full disk
    and their key's path (before: 'worker lost' after minutes of retries, with partial temp
    files filling the disk)."""
    root = small_disk / "store"
    with StarburstExecutor(store=root.as_uri(), max_workers=1) as ex:
        outcomes: list[int | str] = []
        for _ in range(4):  # one at a time: submits close together travel in one batch
            try:
                outcomes.append(len(ex.submit(os.urandom, 2 * _MB).result(timeout=30)))
            except StoreConfigError as exc:
                outcomes.append(str(exc))
    assert outcomes[0] == 2 * _MB
    failures = [o for o in outcomes if isinstance(o, str)]
    assert failures, outcomes
    for message in failures:
        assert "no space left" in message
        assert str(root / "sessions") in message
        assert "could not start" not in message
    assert all(o == 2 * _MB for o in outcomes if not isinstance(o, str))
    assert _temp_files(root) == []


@pytest.mark.slow
@pytest.mark.parametrize("executor_store", ["local"], indirect=True)
def test_workers_that_cannot_register_on_a_full_disk_say_so(
    small_disk: Path, executor_store: str
) -> None:
    """A task fills the disk and kills its worker: its replacements cannot even register.
    The caller's error leads with the full disk and the path (before: only 'workers exited
    before starting', the cause buried in the last of 20 log lines)."""
    del executor_store  # only its environment: workers import chaos_tasks
    root = small_disk / "store"
    with StarburstExecutor(store=root.as_uri(), max_workers=1) as ex:
        future = ex.submit(chaos_tasks.fill_disk_and_die, str(small_disk / "filler"))
        with pytest.raises(BrokenStarburstExecutor) as caught:
            future.result(timeout=60)
    cause = str(caught.value).split("Its log:", 1)[0]
    assert "no space left" in cause
    assert str(root / "sessions") in cause
    assert _temp_files(root) == []
