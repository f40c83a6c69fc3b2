"""ingest_devtools."""
