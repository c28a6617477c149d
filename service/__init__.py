"""dpx: a differentially private statistics exchange for child-protection helplines."""
