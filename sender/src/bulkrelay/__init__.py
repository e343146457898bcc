"""bulkrelay: a dedicated, throttled outbound relay for bulk transactional mail."""

__version__ = "0.1.0"
