"""peb-mail: practise professional email by email."""

__version__ = "0.1.0"
