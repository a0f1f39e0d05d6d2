"""The ground floor: errors, config types and window geometry; imports nothing else of segkit."""

__version__ = "0.1.0"
