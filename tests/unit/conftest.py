"""Fixtures shared by the unit tests (defined beside their helpers)."""

from fakelogin import login  # noqa: F401  (a fake login node: sh, squeue, heartbeats)
from fakesite import adapter, configure, executor, renders  # noqa: F401
