"""One module per group of scenarios; each takes the shared Bench and records figures."""
