"""ingest_producer."""
