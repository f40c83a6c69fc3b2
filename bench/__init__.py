"""The `make bench` harness: load scenarios, ceilings and the tutorial baseline (issue 4)."""
