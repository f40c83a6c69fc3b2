"""Agent wire protocols: decoders that turn a request body into samples, and nothing else.

One module per protocol, each a pure function from bytes (already gunzipped) to
``Decoded``: InfluxDB line protocol (``lineprotocol``), Prometheus remote-write 1.0
(``remotewrite``, with its vendored ``remote_write.proto``) and OTLP/HTTP metrics (``otlp``).
They know nothing of HTTP, settings, Redis or the event schema's name rules: the routes call
them, and every sample then goes through the same validation and append path as the JSON API.
Each decoder's mapping onto metric, source and labels is a small frozen Struct passed in.
"""

from ingest_producer.protocols.result import (
    BodyTooLargeError,
    Decoded,
    ProtocolError,
    ProtocolSample,
    Rejected,
)

__all__ = ["BodyTooLargeError", "Decoded", "ProtocolError", "ProtocolSample", "Rejected"]
