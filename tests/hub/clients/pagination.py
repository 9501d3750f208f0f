"""Link-header pagination (the server's page sizes are lowered to 2 by the test): listings, trees, commits.
Environment: HF_ENDPOINT, HF_TOKEN (alice's)."""

from __future__ import annotations

from huggingface_hub import CommitOperationAdd, HfApi

api = HfApi()
for i in range(5):
    api.create_repo(f"alice/paged-{i}")
assert sorted(m.id for m in api.list_models(search="paged")) == [f"alice/paged-{i}" for i in range(5)]
assert len(list(api.list_models(search="paged", limit=3))) == 3
repo = "alice/paged-0"
api.create_commit(
    repo, operations=[CommitOperationAdd(f"dir/f{i}.txt", b"x") for i in range(5)], commit_message="five"
)
for i in range(3):
    api.upload_file(path_or_fileobj=b"%d" % i, path_in_repo=f"feat/x/{i}.txt", repo_id=repo)
files = api.list_repo_files(repo)
assert len(files) == 9 and len(set(files)) == 9, files
assert len([e for e in api.list_repo_tree(repo, path_in_repo="dir")]) == 5
assert len(api.list_repo_commits(repo)) == 5
print("ALL OK")
