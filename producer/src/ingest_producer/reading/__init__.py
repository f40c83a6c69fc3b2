"""The read side: range queries, fleet aggregates, sources, charts and dead letters; a
metric's per-shard partials are merged in ``partials`` alone.

The JSON routes (and the dashboard through them) call these modules; routes stay thin. Keys
come from ``ingest_shared.keys``; every metric and source name is checked with the event
schema's rules (``params``) before it becomes part of a key or a FILTER. Every TS.MGET /
TS.MRANGE with FILTER goes through ``fanout.fan_out`` so it can run on every cluster primary.
"""
