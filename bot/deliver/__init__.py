"""Delivery: the only modules that post to Slack or send mail."""
