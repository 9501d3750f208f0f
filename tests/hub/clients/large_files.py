"""A file above the server's inline limit (lowered to 1 MB by the tests): Git LFS with
HF_HUB_DISABLE_XET=1, and a clear error naming that setting when the client would use Xet.
Environment: HF_ENDPOINT, HF_TOKEN, XET (1 when hf_xet is left enabled)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download

api = HfApi()
repo = api.create_repo("alice/large-" + os.environ["XET"], exist_ok=True).repo_id
tmp = Path(tempfile.mkdtemp())
big = tmp / "big.dat"
big.write_bytes(os.urandom(3 * 1024**2 + 17))
# Inline (below the 1 MB limit) but above lfs_threshold_bytes: stored in the blob store, as a pointer.
medium = tmp / "medium.dat"
medium.write_bytes(os.urandom(900_000))
api.upload_file(path_or_fileobj=str(medium), path_in_repo="medium.dat", repo_id=repo)
entry = next(e for e in api.list_repo_tree(repo) if e.path == "medium.dat")
assert entry.lfs is not None and entry.size == 900_000, entry
assert Path(hf_hub_download(repo, "medium.dat")).read_bytes() == medium.read_bytes()
if os.environ["XET"] == "1":
    try:
        api.upload_file(path_or_fileobj=str(big), path_in_repo="big.dat", repo_id=repo)
        raise SystemExit("a Xet upload cannot succeed against this server")
    except Exception:  # hf_xet reports the 501 of xet-write-token without its message
        pass  # the client logged the server's warning (X-HF-Warning), which the test reads
else:
    api.upload_file(path_or_fileobj=str(big), path_in_repo="big.dat", repo_id=repo)
    api.upload_file(path_or_fileobj=str(big), path_in_repo="again/big.dat", repo_id=repo)  # stored once
    entry = next(e for e in api.list_repo_tree(repo) if e.path == "big.dat")
    assert entry.lfs is not None and entry.size == big.stat().st_size
    assert Path(hf_hub_download(repo, "big.dat")).read_bytes() == big.read_bytes()
    snap = Path(snapshot_download(repo))
    assert (snap / "again" / "big.dat").read_bytes() == big.read_bytes()
print("ALL OK")
