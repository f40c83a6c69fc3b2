"""The tutorial's design, re-implemented as a benchmark baseline (not product code)."""
