"""Accounts: users, organizations, memberships, API tokens, web sessions, and the permission function."""
