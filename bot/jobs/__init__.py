"""Jobs: one function per command that takes its inputs and returns a result (no printing)."""
