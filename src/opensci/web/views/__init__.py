"""Page views, one module per domain: accounts, owners, repos (reading) and repo_admin (forms)."""
