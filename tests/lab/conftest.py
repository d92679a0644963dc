"""Fixtures shared by the lab tests that submit drone scripts by hand."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tardis_netadapter_lab import Lab
from test_chain_support import Drone


@pytest.fixture
def drones(lab: Lab) -> Iterator[list[Drone]]:
    """Drones of one test; each is cancelled and checked for leftovers."""
    started: list[Drone] = []
    yield started
    problems = []
    for drone in started:
        drone.cancel()
        deadline = time.monotonic() + 10
        while drone.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        if drone.leftovers():
            problems.append(f"{drone.uuid} left {drone.leftovers()}")
        if "exiting with status" not in drone.output:
            problems.append(f"{drone.uuid} did not log its exit:\n{drone.output}")
    assert not problems, problems
