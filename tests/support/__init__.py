"""Test support code shared by unit, integration and fault tests."""
