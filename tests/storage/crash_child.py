"""Run by test_crash.py in a subprocess that gets killed: puts contents(start), contents(start + 1) …
forever, printing `start N` before each put and `ok N OID` once it returned (the acknowledgement).

Configured like the server, by OPENSCI_HOME, OPENSCI_DATABASE_URL and OPENSCI_STORAGE_PACK_MAX_BYTES.
"""

from __future__ import annotations

import io
import random
import sys


def content(i: int) -> bytes:
    """Deterministic content number i: 0.5 to 6 MB, half of them sharing a region with the previous one
    (so puts both write new chunks and reuse old ones)."""
    rng = random.Random(i)
    size = rng.randrange(500_000, 6_000_000)
    if i % 2 and i > 0:
        shared = content(i - 1)
        return rng.randbytes(size // 3) + shared[: size // 2]
    return rng.randbytes(size)


def main() -> None:
    from opensci.db import Database
    from opensci.settings import Settings
    from opensci.storage.store import BlobStore

    settings = Settings()
    store = BlobStore(settings, Database(settings.effective_database_url))
    i = int(sys.argv[1])
    while True:
        print(f"start {i}", flush=True)
        info = store.put(io.BytesIO(content(i)))
        print(f"ok {i} {info.oid}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
