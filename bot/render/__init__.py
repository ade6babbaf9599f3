"""Rendering: Jinja environment and filters, Slack limits, text/JSON/CSV, charts."""
