"""datasets' push_to_hub (Parquet shards written to temporary files, preuploaded, deleted, then committed),
then load_dataset of what it pushed, twice (the second push replaces the first). With hf_xet enabled the
shards would go over Xet, which this server does not speak: the push fails, and the client logs the
server's advice (X-HF-Warning), which the test reads.

Environment: HF_ENDPOINT, HF_TOKEN (alice's), XET (1 when hf_xet is left enabled).
"""

from __future__ import annotations

import os
import sys

import datasets
from huggingface_hub import HfApi

api = HfApi()
repo = f"{api.whoami()['name']}/hfds2"

if os.environ["XET"] == "1":
    try:
        datasets.Dataset.from_dict({"x": range(1000)}).push_to_hub(repo)
        raise SystemExit("a Xet upload cannot succeed against this server")
    except ConnectionError:  # hf_xet reports the 501 of xet-write-token without its message
        print("ALL OK")
        sys.exit(0)

datasets.Dataset.from_dict({"x": range(1000)}).push_to_hub(repo)
ds = datasets.load_dataset(repo, split="train")
assert ds.num_rows == 1000 and ds[999]["x"] == 999, ds
shards = [e for e in api.list_repo_tree(repo, "data", repo_type="dataset")]
assert len(shards) == 1 and shards[0].path.endswith(".parquet") and shards[0].lfs is not None, shards

again = datasets.DatasetDict(
    {
        "train": datasets.Dataset.from_dict({"x": range(10), "y": [str(i) for i in range(10)]}),
        "test": datasets.Dataset.from_dict({"x": [7, 8], "y": ["a", "b"]}),
    }
)
again.push_to_hub(repo, commit_message="second version")
loaded = datasets.load_dataset(repo, download_mode="force_redownload")
assert set(loaded) == {"train", "test"}, loaded
assert loaded["train"].num_rows == 10 and loaded["test"][1] == {"x": 8, "y": "b"}, loaded
print("ALL OK")
