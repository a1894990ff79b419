"""Model lifecycle: the promotion gate, moving an alias, and rolling workers over to the new version."""
