"""ingest_worker."""
