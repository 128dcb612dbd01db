"""A batch's finished tasks, kept while it runs, so that a retry reruns only the rest.

A worker that dies in the middle of a batch (SIGKILL, out of memory, Spot) used to cost the
whole batch: the retry ran every task again, and near the end of a run, with one worker left
and workers lost often, that could exhaust ``max_attempts`` on work that was mostly done.
Now the worker saves the outcomes of the tasks it finished (``partial/{bid}``, a signed
``ResultRecord`` bound to its key), and the worker that takes the batch over starts after
them.

Cost: a save is one PUT, made after a task only when the work not yet saved took
``every`` seconds or more (a sixth of the lease: at most twice the rate of lease renewals,
and a lost worker costs at most that much work again). A batch of quick tasks, the common
case, finishes before any save. A first attempt reads nothing; a retry reads one object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starburst_executor._session import Session
from starburst_executor.errors import ObjectNotFoundError, StarburstError
from starburst_executor.protocol import ResultRecord, TaskOutcome, TaskSpec

__all__ = ["BatchProgress", "fill_unfinished"]

logger = logging.getLogger(__name__)


class BatchProgress:
    """Saves and restores the finished part of the batch one worker runs.

    Args:
        session: the session.
        worker: this worker's id (named in the saved record).
        every: the least time between two saves of one batch (seconds).
    """

    def __init__(self, session: Session, worker: str, every: float) -> None:
        self._session = session
        self._worker = worker
        self._every = every
        self._saved_at = time.monotonic()
        self._saved = 0  # outcomes saved for the current batch
        self._exists = False  # a partial record of the current batch is in the store

    def restore(self, bid: str, attempt: int) -> tuple[list[TaskOutcome], dict[int, str]]:
        """The outcomes (in task order) and outputs of the tasks of ``bid`` that an earlier
        attempt finished; nothing on a first attempt (no read)."""
        self._saved_at, self._saved, self._exists = time.monotonic(), 0, False
        if attempt <= 1:
            return [], {}
        key = self._session.keys.partial(bid)
        try:
            data = self._session.store.get(key).data
            record = ResultRecord.decode(self._session.codec, data, key)
        except ObjectNotFoundError:
            return [], {}
        except StarburstError as exc:  # damaged or unreadable: run the batch from the start
            logger.warning("batch %s: its saved progress cannot be used: %s", bid, exc)
            return [], {}
        self._saved, self._exists = len(record.outcomes), True
        logger.info(
            "batch %s: %d tasks finished by %s are kept; the rest runs",
            bid,
            len(record.outcomes),
            record.worker,
        )
        return list(record.outcomes), dict(record.outputs)

    def save_if_due(
        self, bid: str, attempt: int, outcomes: list[TaskOutcome], outputs: dict[int, str]
    ) -> None:
        """Save ``outcomes`` if the unsaved work took ``every`` seconds or more. A failed save
        only means a retry reruns more: the batch goes on."""
        now = time.monotonic()
        if len(outcomes) <= self._saved or now - self._saved_at < self._every:
            return
        key = self._session.keys.partial(bid)
        record = ResultRecord(bid, self._worker, attempt, tuple(outcomes), None, dict(outputs))
        try:
            self._session.store.put(key, record.encode(self._session.codec, key))
        except StarburstError as exc:
            logger.warning("batch %s: could not save its progress: %s", bid, exc)
            return
        self._saved_at, self._saved, self._exists = now, len(outcomes), True

    def discard(self, bid: str) -> None:
        """The batch's result is delivered: its saved progress is of no more use."""
        if not self._exists:
            return
        self._exists = False
        try:
            self._session.store.delete_many([self._session.keys.partial(bid)])
        except StarburstError as exc:  # the session's cleanup removes it later
            logger.info("batch %s: could not delete its saved progress: %s", bid, exc)


def fill_unfinished(
    done: list[TaskOutcome], tasks: Sequence[TaskSpec], error: bytes
) -> list[TaskOutcome]:
    """``done`` followed, in task order, by ``error`` (a pickled exception) for each task
    of ``tasks`` that did not finish."""
    finished = {o.index for o in done}
    return done + [TaskOutcome(t.index, False, error) for t in tasks if t.index not in finished]
