"""Parsers of the official dataset layouts; each returns a Manifest (see vidkd.data.manifest)."""
