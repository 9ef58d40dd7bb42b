"""Errors any layer may raise about what a user gave it."""


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line."""
