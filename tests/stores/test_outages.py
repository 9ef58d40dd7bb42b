"""Riding out store outages (stores/outages.py): which errors are waited out, for how long, what is logged.

The store here is a stand-in that fails a given number of times; the clock and the pauses are the test's, so no test
waits. The outages of real servers are in tests/pipelines/test_store_outage.py.
"""

from __future__ import annotations

import logging

import pytest

from stores.errors import StoreUnavailableError
from stores.outages import LONGEST_PAUSE_S, Patient, patient


class Unreachable(Exception):
    pass


class FlakyStore:
    """Fails ``failures`` calls with ``Unreachable``, then answers; ``Unreachable`` is its only transient error."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.closed = False

    def read(self, key: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unreachable("connection refused")
        return f"value of {key}"

    def broken(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unreachable("connection refused")
        raise ValueError("not an outage")

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, Unreachable)

    def close(self) -> None:
        self.closed = True


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def patient_store(store: FlakyStore, clock: FakeTime, patience_s: float = 60.0) -> Patient:
    return Patient(store, "store test://", patience_s=patience_s, sleep=clock.sleep, clock=lambda: clock.now)


def test_an_outage_is_waited_out_with_growing_pauses_and_logged_once_at_each_end(caplog):
    clock, store = FakeTime(), FlakyStore(failures=8)

    with caplog.at_level(logging.WARNING, logger="stores.outages"):
        assert patient_store(store, clock).read("k") == "value of k"

    assert store.calls == 9
    assert all(later >= earlier * 0.5 for earlier, later in zip(clock.pauses, clock.pauses[1:], strict=False))
    assert max(clock.pauses) <= LONGEST_PAUSE_S
    assert sum(clock.pauses[-3:]) > sum(clock.pauses[:3])
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("store test:// cannot be reached (connection refused): waiting for it")
    assert messages[1] == f"store test:// answers again, after {clock.now:.1f} s"


def test_an_outage_longer_than_the_patience_raises_its_error():
    clock, store = FakeTime(), FlakyStore(failures=10_000)

    with pytest.raises(Unreachable):
        patient_store(store, clock, patience_s=30.0).read("k")

    assert 30.0 <= clock.now <= 30.0 + LONGEST_PAUSE_S


def test_an_error_that_is_no_outage_raises_at_once():
    clock, store = FakeTime(), FlakyStore(failures=0)

    with pytest.raises(ValueError, match="not an outage"):
        patient_store(store, clock).broken()

    assert clock.pauses == []


def test_an_outage_ended_by_an_answer_that_is_an_error_is_logged_as_over(caplog):
    # A Redis write sent before the server stopped runs when it continues; the retry then finds its own write and
    # fails its check. The server answered, so the outage is over, and the log must say so before the error goes up.
    clock, store = FakeTime(), FlakyStore(failures=3)

    with caplog.at_level(logging.WARNING, logger="stores.outages"), pytest.raises(ValueError, match="not an outage"):
        patient_store(store, clock).broken()

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[1] == f"store test:// answers again, after {clock.now:.1f} s"


def test_close_is_the_stores_own_and_never_retried():
    store = FlakyStore(failures=0)
    with patient_store(store, FakeTime()):
        pass
    assert store.closed


def test_opening_a_store_waits_while_its_server_does_not_answer():
    clock, attempts = FakeTime(), []

    def open_store(url: str) -> FlakyStore:
        attempts.append(url)
        if len(attempts) < 3:
            raise StoreUnavailableError(f"store {url} cannot be reached")
        return FlakyStore(failures=0)

    store = patient(open_store, "test://x", "store", sleep=clock.sleep, clock=lambda: clock.now)

    assert store.read("k") == "value of k"
    assert attempts == ["test://x"] * 3
