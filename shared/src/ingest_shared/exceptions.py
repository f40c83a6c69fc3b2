"""Every exception the pipeline raises on purpose.

    IngestError
    ├── ConfigurationError    bad settings, or a Redis without what we need: fatal, explain
    ├── InvalidEventError     permanent: this event can never be stored (dead-letter / 4xx)
    ├── ProtocolError         (also a ValueError) an agent protocol body that cannot be read
    │   └── BodyTooLargeError     ...because it decompresses past its limit (413)
    ├── TransientStoreError   Redis may manage later: back off, retry, ack nothing
    │   └── OutcomeUnknownError   ...and the command may have run before the failure (a timeout
    │                             after sending): an append may have happened
    └── ReadsBusyError        this process runs as many heavy reads as it may: a 503, retry

Redis' own ConnectionError/TimeoutError are treated as transient where they are caught.
"""


class IngestError(Exception):
    """Base class of the pipeline's own errors."""


class ConfigurationError(IngestError):
    """A setting or the Redis server cannot work; the process must stop and say why."""


class InvalidEventError(IngestError):
    """An event (or stream entry) that no retry can make valid."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class ProtocolError(IngestError, ValueError):
    """A whole request body of an agent protocol (line protocol, remote-write, OTLP) cannot be
    decoded; the message names the problem and is fit for a 400. Anything narrower (a bad
    line, a series without a source) is refused on its own and the rest decodes."""


class BodyTooLargeError(ProtocolError):
    """The body decompresses to more than the decoder was allowed to produce (a 413)."""


class TransientStoreError(IngestError):
    """A write did not happen for a reason that may go away; retry without acknowledging."""


class OutcomeUnknownError(TransientStoreError):
    """The connection failed after the command was sent: it may or may not have run."""


class ReplyTooLargeError(IngestError):
    """A reply passed the client's byte budget; its connection was closed unread."""


class ReadsBusyError(IngestError):
    """A read this producer process cannot take now: INGEST_READ_CONCURRENCY Redis-heavy
    reads were in flight and no slot freed in time, or the reads of INGEST_READ_RATE a second
    are scheduled further ahead than a read may wait."""

    def __init__(self, limit: int, waited_ms: int, *, rate: bool = False) -> None:
        limited = (
            f"INGEST_READ_RATE={limit} a second" if rate else f"INGEST_READ_CONCURRENCY={limit}"
        )
        super().__init__(
            f"too many read queries in this producer process ({limited}; this one could not "
            f"start within {waited_ms} ms); retry after Retry-After seconds"
        )
        self.limit = limit
