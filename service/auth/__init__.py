"""Who is calling: bearer tokens, stored only as hashes, and the roles they carry."""
