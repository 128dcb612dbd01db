"""Unit tests: the protocol's parts on the in-memory store, with a fake clock, in milliseconds."""
