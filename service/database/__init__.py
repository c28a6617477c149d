"""The shared state of dpx: one schema, one code path for SQLite and PostgreSQL."""
