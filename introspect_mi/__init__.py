"""introspect_mi: mechanistic analysis of introspection (self-prediction) in language models."""

__version__ = "0.1.0"
