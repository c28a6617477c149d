"""Privacy budgets and releases: atomic charges, the release store and its cache."""
