"""The worker side: the loop every worker runs, locally or in a container."""

from starburst_executor.worker.loop import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
