"""datasets.load_dataset (Parquet, CSV, JSON Lines; also streaming, which reads with Range) and HfFileSystem.

Environment: HF_ENDPOINT, HF_TOKEN (alice's).
"""

from __future__ import annotations

import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem

api = HfApi()
me = api.whoami()["name"]


def dataset(name: str, files: dict[str, bytes], private: bool = False) -> str:
    repo = f"{me}/{name}"
    api.create_repo(repo, repo_type="dataset", private=private)
    ops = [CommitOperationAdd(path, content) for path, content in files.items()]
    api.create_commit(repo, operations=ops, commit_message=f"add {name}", repo_type="dataset")
    return repo


buf = io.BytesIO()
pq.write_table(pa.table({"a": list(range(100)), "b": [str(i) for i in range(100)]}), buf)
parquet = dataset("pq", {"data/train.parquet": buf.getvalue(), "data/test.parquet": buf.getvalue()}, True)
csv = dataset("csv", {"train.csv": b"x,y\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(50))})
lines = b"".join(json.dumps({"text": f"line {i}", "n": i}).encode() + b"\n" for i in range(30))
jsonl = dataset("jsonl", {"data/train-00000.jsonl": lines, "README.md": b"# JSON lines\n"})

ds = datasets.load_dataset(parquet)
assert set(ds) == {"train", "test"} and ds["train"].num_rows == 100 and ds["train"][5]["b"] == "5", ds
assert next(iter(datasets.load_dataset(parquet, split="train", streaming=True)))["a"] == 0
c = datasets.load_dataset(csv, split="train")
assert c.num_rows == 50 and c[7]["y"] == 49
assert [r["y"] for r in datasets.load_dataset(csv, split="train", streaming=True)][:3] == [0, 1, 4]
j = datasets.load_dataset(jsonl, split="train")
assert j.num_rows == 30 and j[3]["text"] == "line 3"
streamed = list(datasets.load_dataset(jsonl, split="train", streaming=True))
assert len(streamed) == 30 and streamed[-1]["n"] == 29

# HfFileSystem reads: ls, glob, info, exists, open/read/seek (Range requests).
fs = HfFileSystem()
root = f"datasets/{parquet}"
assert sorted(fs.ls(root, detail=False)) == [f"{root}/.gitattributes", f"{root}/data"]
assert sorted(fs.glob(f"{root}/**/*.parquet")) == [f"{root}/data/test.parquet", f"{root}/data/train.parquet"]
info = fs.info(f"{root}/data/train.parquet")
assert info["type"] == "file" and info["size"] == len(buf.getvalue()), info
assert fs.exists(f"{root}/data") and not fs.exists(f"{root}/nope")
with fs.open(f"datasets/{csv}/train.csv", "rb") as fh:
    assert fh.read(4) == b"x,y\n"
    fh.seek(4)
    assert fh.read(4) == b"0,0\n"
assert fs.read_text(f"datasets/{jsonl}/README.md") == "# JSON lines\n"
table = pq.read_table(fs.open(f"{root}/data/train.parquet", "rb"))
assert table.num_rows == 100
assert fs.cat_file(f"datasets/{csv}/train.csv", start=4, end=8) == b"0,0\n"
print("ALL OK")
