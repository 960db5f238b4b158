"""Helpers only the tests and bench/ use (pytest puts tests/ on the path: ``from support.x import``).

``ctscribe demo`` and ``ctscribe fixtures`` never reach these, so they live outside the package;
tests/test_package_users.py fails if a module under src/ctscribe is left that only tests reach.
"""
