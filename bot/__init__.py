"""openrouter-usage: watch an OpenRouter account's spending."""

__version__ = "0.1.0"
