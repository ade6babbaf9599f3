"""Jinja templates for Slack and e-mail messages (shipped inside the wheel as bot.templates)."""
