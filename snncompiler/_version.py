"""The package version (a leaf module: the artifact writer records it without importing the face)."""

__version__ = "0.1.0"
