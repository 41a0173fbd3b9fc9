"""rorfeed: the hourly feed of bed availability from an establishment to its regional ROR."""

__version__ = "0.1.0"
