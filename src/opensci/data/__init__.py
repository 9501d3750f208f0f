"""Open data: tables from the files of a dataset revision, statistics, and sandboxed SQL over them.

Everything here is derived from a commit and cached under `HOME/derived/<commit>/`, so it never goes
stale and can be thrown away and recomputed."""
