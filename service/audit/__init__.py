"""The audit log: every action that touches data or budget, in a verifiable hash chain."""
