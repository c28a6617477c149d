"""Ingest, cell serialization and encrypted batch storage for helpline contact aggregates."""
