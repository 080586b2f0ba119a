"""Operators' actions on services and accounts, shared by the CLI and tests."""
