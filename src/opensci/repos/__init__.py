"""Open code: git-backed repositories of every kind, git smart HTTP, commits and browsing."""
