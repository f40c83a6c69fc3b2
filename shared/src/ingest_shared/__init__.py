"""ingest_shared."""
