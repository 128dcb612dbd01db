#!/bin/sh
# The worker container's entrypoint: the worker, as PID 1 (exec), so that ECS's SIGTERM
# (a stop, a Spot interruption) reaches it and it can hand its claim back. Arguments are
# passed through; normally there are none and settings come from STARBURST_* variables.
exec python -m starburst_executor.worker "$@"
