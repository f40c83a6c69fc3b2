"""What a loop says while Redis is away: one warning when an outage starts, a reminder per
interval, one line when Redis answers again (not one line per retry)."""

from __future__ import annotations

import time

import structlog

# While Redis stays unreachable: one warning when it starts, then a reminder this often.
OUTAGE_REMINDER_INTERVAL_S = 60.0

log = structlog.get_logger("ingest_worker")


class Outage:
    """The state of one loop's view of Redis: up, or down since when."""

    def __init__(self, reminder_interval_s: float = OUTAGE_REMINDER_INTERVAL_S) -> None:
        self._interval_s = reminder_interval_s
        self._since: float | None = None
        self._next_reminder_at = 0.0

    def failed(self, step: str, commands: str | None, error: Exception, retry_in_s: float) -> None:
        """A transient failure of ``step``: logged if it starts an outage or a reminder is due."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
            self._next_reminder_at = now + self._interval_s
            log.warning(
                "redis_unavailable",
                step=step,
                commands=commands,
                error=str(error),
                retry_in_s=retry_in_s,
            )
        elif now >= self._next_reminder_at:
            self._next_reminder_at = now + self._interval_s
            log.warning(
                "redis_still_unavailable",
                step=step,
                error=str(error),
                down_for_s=round(now - self._since, 1),
            )
        else:
            log.debug("redis_retry", step=step, error=str(error), retry_in_s=retry_in_s)

    def recovered(self) -> None:
        """A step worked: one line if it ends an outage."""
        if self._since is not None:
            log.info("redis_available_again", down_for_s=round(time.monotonic() - self._since, 1))
            self._since = None
