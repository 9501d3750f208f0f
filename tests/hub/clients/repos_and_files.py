"""The unmodified huggingface_hub client against OpenSci: repositories, commits, refs, listings, downloads.

Environment: HF_ENDPOINT, HF_TOKEN (alice's), SUFFIX (makes repository names unique per run).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RevisionNotFoundError

api = HfApi()
me = api.whoami()["name"]
assert me == "alice", me
suffix = os.environ["SUFFIX"]
model, data = f"{me}/model-{suffix}", f"{me}/data-{suffix}"
tmp = Path(tempfile.mkdtemp())

# Repositories: create (twice, exist_ok), info, private datasets.
url = api.create_repo(model, exist_ok=True)
assert url.repo_id == model and url.repo_type == "model", url
assert api.create_repo(model, exist_ok=True).repo_id == model
try:
    api.create_repo(model)
    raise SystemExit("create_repo of an existing repository must raise")
except HfHubHTTPError as exc:
    assert exc.response.status_code == 409
durl = api.create_repo(data, repo_type="dataset", private=True)
assert durl.repo_type == "dataset", durl
info = api.model_info(model)
assert info.id == model and len(info.sha) == 40 and info.private is False
assert [s.rfilename for s in info.siblings] == [".gitattributes"]
dinfo = api.dataset_info(data)
assert dinfo.private is True and len(dinfo.sha) == 40
assert api.repo_exists(data, repo_type="dataset") and not api.repo_exists(data)
assert api.repo_info(model).sha == info.sha

# upload_file, upload_folder (with a README: validate-yaml), create_commit with add, delete, copy.
(tmp / "hello.txt").write_text("hello\n")
c1 = api.upload_file(path_or_fileobj=str(tmp / "hello.txt"), path_in_repo="hello.txt", repo_id=model)
assert "/commit/" in c1.commit_url and len(c1.oid) == 40
folder = tmp / "folder"
(folder / "sub").mkdir(parents=True)
(folder / "README.md").write_text("---\nlicense: mit\n---\n# A model\n")
(folder / "sub" / "a.txt").write_text("a\n")
(folder / "sub" / "b.txt").write_text("b\n")
(folder / "weights.bin").write_bytes(os.urandom(2048))  # *.bin: LFS by the default .gitattributes
api.upload_folder(folder_path=str(folder), repo_id=model, commit_message="add folder")
files = set(api.list_repo_files(model))
assert {".gitattributes", "hello.txt", "README.md", "sub/a.txt", "sub/b.txt", "weights.bin"} == files, files
api.create_commit(
    model,
    operations=[
        CommitOperationAdd("new.txt", b"new content\n"),
        CommitOperationDelete("sub/b.txt"),
        CommitOperationCopy("hello.txt", "copies/hello.txt"),
        CommitOperationCopy("weights.bin", "copies/weights.bin"),
    ],
    commit_message="add, delete, copy",
    commit_description="a longer description",
)
files = set(api.list_repo_files(model))
assert "sub/b.txt" not in files and {"new.txt", "copies/hello.txt", "copies/weights.bin"} <= files, files
api.create_commit(model, operations=[CommitOperationDelete("copies/")], commit_message="delete a folder")
assert not any(f.startswith("copies/") for f in api.list_repo_files(model))
try:
    api.create_commit(model, operations=[CommitOperationDelete("nope.txt")], commit_message="x")
    raise SystemExit("deleting a missing file must raise")
except EntryNotFoundError:
    pass
try:
    api.create_commit(
        model, operations=[CommitOperationAdd("x.txt", b"x")], commit_message="x", parent_commit=c1.oid
    )
    raise SystemExit("a stale parent_commit must raise")
except HfHubHTTPError as exc:
    assert exc.response.status_code in (409, 412), exc

# Tree, paths-info, LFS metadata.
tree = {e.path: e for e in api.list_repo_tree(model, recursive=True)}
assert type(tree["sub"]).__name__ == "RepoFolder" and tree["sub/a.txt"].size == 2
w = tree["weights.bin"]
assert w.lfs is not None and w.lfs.size == 2048 and w.size == 2048 and len(w.lfs.sha256) == 64, w
top = {e.path for e in api.list_repo_tree(model)}
assert "sub" in top and "sub/a.txt" not in top
assert {e.path for e in api.list_repo_tree(model, path_in_repo="sub")} == {"sub/a.txt"}
expanded = list(api.list_repo_tree(model, path_in_repo="sub", expand=True))
assert expanded[0].last_commit is not None and expanded[0].last_commit.title == "add folder"
infos = api.get_paths_info(model, ["hello.txt", "sub", "missing.txt"])
assert {i.path for i in infos} == {"hello.txt", "sub"}
detailed = api.model_info(model, files_metadata=True)
sizes = {s.rfilename: (s.size, s.lfs) for s in detailed.siblings}
assert sizes["hello.txt"][0] == 6 and sizes["weights.bin"][1].sha256 == w.lfs.sha256, sizes

# Downloads.
assert api.file_exists(model, "hello.txt") and not api.file_exists(model, "nope.txt")
assert not api.file_exists(model, "sub")
assert Path(hf_hub_download(model, "hello.txt")).read_text() == "hello\n"
assert Path(hf_hub_download(model, "weights.bin")).read_bytes() == (folder / "weights.bin").read_bytes()
snap = Path(snapshot_download(model))
assert {"hello.txt", "README.md", "sub", "weights.bin", ".gitattributes", "new.txt"} <= set(os.listdir(snap))
assert (snap / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()
old = Path(snapshot_download(model, revision=c1.oid))
assert set(os.listdir(old)) == {".gitattributes", "hello.txt"}

# Branches with a slash, tags, refs, commits.
api.create_branch(model, branch="feat/x")
api.create_branch(model, branch="feat/x", exist_ok=True)
api.upload_file(path_or_fileobj=b"on a branch\n", path_in_repo="branch.txt", repo_id=model, revision="feat/x")
assert Path(hf_hub_download(model, "branch.txt", revision="feat/x")).read_text() == "on a branch\n"
assert "branch.txt" in api.list_repo_files(model, revision="feat/x")
assert "branch.txt" not in api.list_repo_files(model)
assert api.model_info(model, revision="feat/x").sha != api.model_info(model).sha
api.create_tag(model, tag="v1", tag_message="first")
api.create_tag(model, tag="v0", revision=c1.oid)
refs = api.list_repo_refs(model, include_pull_requests=True)
assert {b.name for b in refs.branches} == {"main", "feat/x"}, refs
assert {t.name for t in refs.tags} == {"v0", "v1"} and refs.pull_requests == [] and refs.converts == []
assert {t.target_commit for t in refs.tags if t.name == "v0"} == {c1.oid}
assert set(os.listdir(snapshot_download(model, revision="v0"))) == {".gitattributes", "hello.txt"}
commits = api.list_repo_commits(model)
titles = [c.title for c in commits]
assert titles[0] == "delete a folder" and titles[-1] == "initial commit", titles
assert commits[1].message == "a longer description" and commits[0].authors
assert len(api.list_repo_commits(model, revision="feat/x")) == len(commits) + 1
api.delete_branch(model, branch="feat/x")
api.delete_tag(model, tag="v0")
assert {b.name for b in api.list_repo_refs(model).branches} == {"main"}

# Errors the client maps to its own exceptions.
for call, exc in (
    (lambda: hf_hub_download(model, "nope.txt"), EntryNotFoundError),
    (lambda: hf_hub_download(model, "hello.txt", revision="no-such-branch"), RevisionNotFoundError),
    (lambda: api.list_repo_files(model, revision="no-such-branch"), RevisionNotFoundError),
    (lambda: api.create_branch(model, branch="b", revision="no-such-rev"), RevisionNotFoundError),
):
    try:
        call()
        raise SystemExit(f"expected {exc.__name__}")
    except exc:
        pass

# Listings: search, author, both types; code repositories count as models.
assert model in {m.id for m in api.list_models(search=f"model-{suffix}")}
assert data in {d.id for d in api.list_datasets(author=me)}
assert model not in {d.id for d in api.list_datasets(author=me)}
assert {m.id for m in api.list_models(author=me, search=suffix)} == {model}
assert list(api.list_models(author="nobody-at-all")) == []

# Deletion.
api.delete_repo(data, repo_type="dataset")
assert not api.repo_exists(data, repo_type="dataset")
api.delete_repo(data, repo_type="dataset", missing_ok=True)
print("ALL OK")
