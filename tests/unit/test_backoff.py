"""Capped exponential backoff between retries while Redis is unavailable."""

from __future__ import annotations

import pytest

from ingest_worker.backoff import INITIAL_DELAY_S, MAX_DELAY_S, Backoff


def test_delays_double_from_the_initial_delay_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.1, cap=1.0)

    delays = [backoff.next_delay() for _ in range(7)]

    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_reset_after_a_success_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(initial=0.1, cap=1.0)
    for _ in range(5):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() == pytest.approx(0.1)


def test_defaults_go_from_a_tenth_of_a_second_to_five_seconds() -> None:
    backoff = Backoff()

    delays = [backoff.next_delay() for _ in range(10)]

    assert (delays[0], delays[-1]) == (INITIAL_DELAY_S, MAX_DELAY_S) == (0.1, 5.0)


@pytest.mark.parametrize(("initial", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_nonsense_bounds_are_refused(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=initial, cap=cap)
