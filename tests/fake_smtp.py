"""Local fake used by the tests (filled in by its owner)."""
