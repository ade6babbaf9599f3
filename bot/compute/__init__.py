"""Pure numbers: aggregates, deltas, digests, forecasts and alert rules (no I/O, no words)."""
