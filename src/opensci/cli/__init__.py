"""The `opensci` command: `opensci <noun> <verb>`. User commands go through the SDK (client/);
operator commands (serve, db, user, token, org, demo) call the services directly."""
