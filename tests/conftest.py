"""Shared pytest set-up: the local fakes live in their own modules, loaded as plugins."""

pytest_plugins = ["tests.fake_openrouter", "tests.fake_slack", "tests.fake_smtp"]
