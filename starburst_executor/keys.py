"""The store's key layout: every key a session or the index has, built in one place.

Key layout under a store's root (``{b}`` is a 100-second time bucket, ``{ts}`` milliseconds on
the store's clock, both zero-padded so that keys sort by time)::

    sessions/{sid}/manifest                    SessionManifest (JSON)  written once
    sessions/{sid}/control                     ControlRecord (JSON)    compare-and-swap
    sessions/{sid}/blobs/{hash}                a large pickled part, content-addressed
    index/{sid}                                SessionManifest again: one key per session, listed
                                               by ``list_sessions`` without touching sessions/
    sessions/{sid}/batches/{b}/{bid}           a batch of tasks (pickle);
                                               bid = {ts}-{origin}-{seq}[-{shape}]-{tasks}
    sessions/{sid}/batches/{b}/{ts}-requeue-{bid}   "run bid again" (JSON)
    sessions/{sid}/claims/{bid}                Claim with its lease (JSON) compare-and-swap
    sessions/{sid}/results/{bid}               the batch's results (pickle), created once
    sessions/{sid}/partial/{bid}               results of its finished tasks, while it runs
    sessions/{sid}/done/{b}/{ts}-{bid}.{nfailed}  "bid finished" event; small results inline
    sessions/{sid}/logs/{wid}                  a worker's log, uploaded when it exits
    sessions/{sid}/workers/{wid}               WorkerRecord (JSON)
    sessions/{sid}/usage/{writer}              UsageRecord (JSON): one client's or worker's
                                               store requests so far, rewritten as they grow

Why this shape (DESIGN.md, "Requirements on the store protocol"):

- Work and completions are *time-ordered* keys, so workers and pollers follow them with a
  start-after cursor (:mod:`starburst_executor._cursor`): a tick costs O(new keys / 1000)
  requests, not O(session). Time buckets let the directory store skip old subtrees too.
- ``claims/`` holds one object per claimed batch; its LastModified is the last lease renewal,
  so one listing finds expired leases.
- A batch's *shape* (``s1``: submitted calls; ``m{n}``: ``map`` chunks of ``n`` items each)
  tells a reader where every task's items stand in submission order without reading the
  batch (a partial ``collect`` numbers its results so). Batches formed by the plain
  executor's manager mix kinds and carry no shape.
- ``results/{bid}`` is created with create-if-absent: a retried duplicate of a batch can never
  replace a delivered result.
"""

from __future__ import annotations

__all__ = ["BUCKET_MS", "INDEX", "SessionKeys", "key_time_ms", "time_bucket", "ts_key"]

BUCKET_MS = 100_000  # one time bucket = 100 s of keys
INDEX = "index/"  # one key per session, listed without touching sessions/


def time_bucket(ts_ms: int) -> str:
    return f"{ts_ms // BUCKET_MS:08d}"


def ts_key(ts_ms: int) -> str:
    """``{bucket}/{ts}``: the sortable stem of every time-ordered key."""
    return f"{time_bucket(ts_ms)}/{ts_ms:013d}"


def key_time_ms(name: str) -> int:
    """The milliseconds of a time-ordered key's leaf (``.../{ts}-...``)."""
    leaf = name.rsplit("/", 1)[-1]
    return int(leaf[:13])


class SessionKeys:
    """Builds every key of one session."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.root = f"sessions/{session_id}/"
        self.manifest = self.root + "manifest"
        self.control = self.root + "control"
        self.batches = self.root + "batches/"
        self.claims = self.root + "claims/"
        self.results = self.root + "results/"
        self.partials = self.root + "partial/"
        self.done = self.root + "done/"
        self.workers = self.root + "workers/"
        self.blobs = self.root + "blobs/"
        self.logs = self.root + "logs/"
        self.usages = self.root + "usage/"
        self.index = INDEX + session_id

    def batch(self, bid: str) -> str:
        return f"{self.batches}{time_bucket(key_time_ms(bid))}/{bid}"

    def requeue(self, ts_ms: int, bid: str, attempt: int) -> str:
        return f"{self.batches}{ts_key(ts_ms)}-requeue-{attempt}-{bid}"

    def claim(self, bid: str) -> str:
        return self.claims + bid

    def result(self, bid: str) -> str:
        return self.results + bid

    def partial(self, bid: str) -> str:
        return self.partials + bid

    def done_event(self, ts_ms: int, bid: str, failed: int) -> str:
        return f"{self.done}{ts_key(ts_ms)}-{bid}.{failed}"

    def log(self, wid: str) -> str:
        return self.logs + wid

    def worker(self, wid: str) -> str:
        return self.workers + wid

    def usage(self, writer: str) -> str:
        return self.usages + writer

    def blob(self, digest: str) -> str:
        return self.blobs + digest

    @staticmethod
    def bid_of(key: str) -> str:
        """The batch id a batch, requeue, claim, result or done key refers to."""
        leaf = key.rsplit("/", 1)[-1]
        if "-requeue-" in leaf:  # {ts}-requeue-{attempt}-{bid}
            return leaf.split("-requeue-", 1)[1].split("-", 1)[1]
        if key.split("/")[2] == "done":  # {ts}-{bid}.{failed}
            return leaf.split("-", 1)[1].rsplit(".", 1)[0]
        return leaf

    @staticmethod
    def leaf(key: str) -> str:
        """The id a claim, worker, log or index key names (its last segment)."""
        return key.rsplit("/", 1)[-1]

    @staticmethod
    def is_requeue(key: str) -> bool:
        return "-requeue-" in key.rsplit("/", 1)[-1]
