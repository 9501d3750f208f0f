"""Which files a commit's `.gitattributes` send through Git LFS: libgit2's answer, fast on large trees."""

from __future__ import annotations

import time
from pathlib import Path

import pygit2
from pygit2.enums import AttrCheck

from opensci.storage.files import lfs_tracker

SIG = pygit2.Signature("t", "t@example.org", 0, 0)
FLAGS = AttrCheck.INDEX_ONLY | AttrCheck.INCLUDE_COMMIT | AttrCheck.NO_SYSTEM


def commit_of(g: pygit2.Repository, files: dict[str, bytes]) -> pygit2.Commit:
    index = pygit2.Index()
    for path, data in files.items():
        index.add(pygit2.IndexEntry(path, g.create_blob(data), pygit2.GIT_FILEMODE_BLOB))
    tree = index.write_tree(g)
    return g[g.create_commit(None, SIG, SIG, "m", tree, [])]


def test_the_tracker_answers_as_libgit2_on_the_whole_commit(tmp_path: Path) -> None:
    g = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    files = {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n/top.csv filter=lfs -text\n",
        "data/.gitattributes": b"*.csv filter=lfs -text\nkeep.bin -filter\n",
        "data/deep/.gitattributes": b"x.txt filter=lfs\n",
        "data/deep/x.txt": b"x",
        "README.md": b"hi",
    }
    commit = commit_of(g, files)
    paths = [
        "a.bin", "top.csv", "sub/top.csv", "data/t.csv", "data/keep.bin", "data/other.bin",
        "data/deep/x.txt", "data/deep/y.txt", "data/deep/z.csv", "elsewhere/x.txt", "README.md",
    ]  # fmt: skip
    tracked = lfs_tracker(g, commit, paths)
    expected = {p: g.get_attr(p, "filter", flags=FLAGS, commit=commit.id) == "lfs" for p in paths}
    assert {p: tracked(p) for p in paths} == expected
    assert [p for p, yes in expected.items() if yes] == [
        "a.bin", "top.csv", "data/t.csv", "data/other.bin", "data/deep/x.txt", "data/deep/z.csv",
    ]  # fmt: skip
    assert not lfs_tracker(g, None, paths)("a.bin")
    plain = commit_of(g, {"README.md": b"no attributes"})
    assert not lfs_tracker(g, plain, ["a.bin"])("a.bin")


def test_thirty_thousand_outputs_onto_a_branch_of_thirty_thousand_files_take_no_time(tmp_path: Path) -> None:
    """The QA repro: a job's 30,000 output files onto a branch that held 30,000 and a `.gitattributes`
    spent 11 minutes asking libgit2 about attributes (it read the large tree again for every path)."""
    g = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    files = {f"f{i}": b"x" for i in range(30_000)}
    files[".gitattributes"] = b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    commit = commit_of(g, files)
    paths = [f"g{i}" for i in range(30_000)] + ["w.bin"]
    started = time.monotonic()
    tracked = lfs_tracker(g, commit, paths)
    answers = [tracked(p) for p in paths]
    assert answers == [False] * 30_000 + [True]
    assert time.monotonic() - started < 10  # about 0.3 s; 30,000 lookups in the commit took 5 minutes
