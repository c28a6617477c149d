"""Fixtures of the client tests: a live dpx per module and a fault-injecting proxy."""

from live_dpx import live, proxy  # noqa: F401 - fixtures, found by pytest by name
