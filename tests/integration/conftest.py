"""Integration tests share the session's real plane (fixtures in tests/conftest.py)."""
