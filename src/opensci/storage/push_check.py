"""The Git LFS part of the pre-receive check: refuse a push whose new commits hold LFS pointers to
content this repository never received (a `git push` without `git lfs`, or with its upload failed).

Run by the pre-receive hook as `python -m opensci.storage.push_check HELD_FILE`, with the updates
(`old new ref` lines) on stdin, inside git's quarantine environment; HELD_FILE lists the oids the
repository holds, one per line, written by the server for this push. Exit status 1 refuses the push.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from opensci.storage.pointers import pointers_in

SHOWN = 5


def missing_pointers(
    git: str, repo: Path, updates: list[tuple[str, str, str]], held: set[str]
) -> dict[str, str]:
    """oid → path of the pointers the pushed commits add whose content the repository does not hold."""
    missing: dict[str, str] = {}
    for _old, new, _ref in updates:
        if not new.strip("0"):
            continue  # a deletion
        for oid, path in pointers_in(git, repo, [new, "--not", "--all"]).items():
            if oid not in held:
                missing.setdefault(oid, path)
    return missing


def main() -> int:
    held = set(Path(sys.argv[1]).read_text().split())
    updates = [tuple(line.split()[:3]) for line in sys.stdin if len(line.split()) >= 3]
    git = os.environ.get("OPENSCI_GIT", "git")
    missing = missing_pointers(git, Path.cwd(), updates, held)  # type: ignore[arg-type]
    if not missing:
        return 0
    print(
        f"opensci: refusing the push: {len(missing)} Git LFS file(s) point to content never uploaded to this "
        "repository:",
        file=sys.stderr,
    )
    for oid, path in list(missing.items())[:SHOWN]:
        print(f"opensci:   {path or '(unnamed)'} (sha256:{oid[:12]}…)", file=sys.stderr)
    if len(missing) > SHOWN:
        print(f"opensci:   … and {len(missing) - SHOWN} more", file=sys.stderr)
    print(
        "opensci: install git-lfs (`git lfs install`) and push again, or upload them with "
        "`git lfs push --all <remote>` first",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
