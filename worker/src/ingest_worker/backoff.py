"""Capped exponential backoff for retrying Redis while it is unreachable or refusing writes."""

from __future__ import annotations

INITIAL_DELAY_S = 0.1
MAX_DELAY_S = 5.0


class Backoff:
    """Delays from ``initial``, doubling per failure up to ``cap``; ``reset()`` on success."""

    def __init__(self, initial: float = INITIAL_DELAY_S, cap: float = MAX_DELAY_S) -> None:
        if not 0 < initial <= cap:
            msg = f"need 0 < initial <= cap, got initial={initial}, cap={cap}"
            raise ValueError(msg)
        self._initial = initial
        self._cap = cap
        self._next = initial

    def next_delay(self) -> float:
        """The delay to wait before the next attempt; each call doubles the following one."""
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        """Start again from ``initial``: the last attempt succeeded."""
        self._next = self._initial
