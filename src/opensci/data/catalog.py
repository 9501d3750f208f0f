"""The tables of a dataset revision: which files hold tables, how they group, where their Parquet is.

Stable interface (the SQL engine and the viewer build on it):

    catalog(settings, store, blobs, session, repo, commit) -> Catalog
    Catalog.tables: list[Table]      Table(name, num_rows, columns, sources, parquet, parquet_rows, notes)
    Catalog.errors: list[FileError]  FileError(path, reason)
    Catalog.table(name) -> Table     (NotFound "table_not_found")

Discovery. Every file of the commit is looked at, except hidden ones (a path part starting with "."),
README files, and extensions no format claims (`formats.py`; a `.json` that is not JSON Lines and an
`.xml` that is not a VOTable are not tables either, and are skipped silently).

Parquet, always. Every table file is turned into one Parquet file under
`HOME/derived/<commit>/tables/<repository path>.parquet`, once per commit: other formats are converted
(streaming), and Parquet files are copied. Copying is the simple, uniform choice: a Parquet file in git
is a compressed object in a pack and one in the blob store is a list of chunks, so neither has a path
DuckDB could read; a copy costs disk (the derived area can always be deleted) but makes every later read
a plain local file read. A file that cannot be read is reported in `Catalog.errors` with the reason;
the rest of the dataset still works.

Grouping into tables (a table's files are in path order, and its rows in file order, then row order):
1. Dataset card: when README.md's YAML front matter declares Hugging Face `configs` —
   `configs: [{config_name, data_files: [{split, path}]}]`, where `path` is a glob or a list of globs
   (`*` within a folder, `**` across folders) and `data_files` may also be a glob or a list of globs
   (split "train") — each (config, split) is a table named after the split for the config called
   `default`, else after the config when it has one split, else `config_split`.
2. Files the card does not claim are grouped by the Hugging Face file-name conventions, within a
   folder: shards `{name}-00000-of-00003.ext`, `{name}-0001.ext`, `{name}_0001.ext` form table `name`;
   files starting with a split name (`train`, `test`, `validation`, `valid`, `dev`, `eval`) and a
   separator (`data/train-*.parquet`) form table `train` …; all files of a folder named after a split
   (`train/*.parquet`) form that table, and files whose names are only numbers or `part-N` (`0.parquet`)
   form a table named after their folder. Any other file is a table named after its stem.
3. Files grouped together must share one schema; when they do not, each becomes a table of its own.
4. Names are unique: when two tables would share a name, each is named after its path instead
   (folders joined by "_", e.g. `a_table` and `b_table` for a/table.csv and b/table.csv).

Caching and concurrency. The catalog is written to `HOME/derived/<commit>/catalog.json` (atomically),
built under an exclusive `fcntl` lock on `HOME/derived/<commit>/catalog.lock`, so concurrent requests
and processes build it once; it is keyed by the commit sha, so it never goes stale.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pygit2
from sqlalchemy.orm import Session

from opensci.data import formats
from opensci.errors import NotFound
from opensci.repos.gitstore import GitStore, list_tree
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import files
from opensci.storage.store import BlobStore

log = logging.getLogger("opensci.data")

CATALOG_VERSION = 2  # 2: files of different formats are never one table; card names win collisions
SPLITS = ("train", "training", "test", "testing", "validation", "valid", "val", "dev", "eval")
_SHARD = re.compile(r"^(?P<base>.+?)[-_.](?:\d+-of-\d+|\d+)$")
_GENERIC = re.compile(r"^(?:\d+|part[-_.]?\d*|shard[-_.]?\d*|data[-_.]?\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Column:
    """A column: its name and its Arrow type, as text (`int64`, `double`, `string`, `timestamp[us]`…)."""

    name: str
    type: str


@dataclass
class Table:
    """One table of a revision.

    - `name`: unique within the revision (see the module docstring for how it is chosen);
    - `num_rows`: the sum over its files;
    - `columns`: name and Arrow type of each column, in order;
    - `sources`: the repository paths of its files, in order;
    - `parquet`: absolute paths of the Parquet files holding its rows, one per source, in the same
      order (under `HOME/derived/<commit>/tables/`); all share one schema;
    - `parquet_rows`: the number of rows of each Parquet file, in the same order;
    - `notes`: things people should know (columns left out of a FITS table, and why …).
    """

    name: str
    num_rows: int
    columns: list[Column]
    sources: list[str]
    parquet: list[str]
    parquet_rows: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileError:
    """A file that looks like a table but cannot be read, and why (for people)."""

    path: str
    reason: str


@dataclass
class Catalog:
    """The tables of one commit, and the files that could not be read."""

    commit: str
    tables: list[Table]
    errors: list[FileError]

    def table(self, name: str) -> Table:
        """The table called `name` (NotFound with code `table_not_found` otherwise)."""
        for t in self.tables:
            if t.name == name:
                return t
        where = f" at revision {self.commit[:12]}" if self.commit else " (the repository is empty)"
        raise NotFound(f"no table {name!r}{where}", code="table_not_found")

    def to_json(self) -> dict[str, Any]:
        return {"version": CATALOG_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Catalog:
        tables = [Table(**{**t, "columns": [Column(**c) for c in t["columns"]]}) for t in data["tables"]]
        return cls(data["commit"], tables, [FileError(**e) for e in data["errors"]])


def derived_dir(settings: Settings, commit: str) -> Path:
    """`HOME/derived/<commit>`, absolute."""
    return (settings.home / "derived" / commit).resolve()


def catalog(
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    session: Session,
    repo: Repository,
    commit: pygit2.Commit | str,
) -> Catalog:
    """The catalog of `repo` at `commit` (a pygit2 commit or a full sha): read from
    `derived/<commit>/catalog.json`, or built once (converting files) under the commit's lock.
    The caller has checked that the actor may read the repository."""
    g = store.open(repo.id)
    c = commit if isinstance(commit, pygit2.Commit) else g[commit].peel(pygit2.Commit)
    sha = str(c.id)
    base = derived_dir(settings, sha)
    path = base / "catalog.json"
    cached = _load(path)
    if cached is not None:
        return cached
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / "catalog.lock"):
        cached = _load(path)
        if cached is not None:
            return cached
        built = _build(settings, g, c, blobs, session, repo, base)
        write_json_atomic(path, built.to_json())
        return built


def _load(path: Path) -> Catalog | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if data.get("version") != CATALOG_VERSION:
        return None
    return Catalog.from_json(data)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between threads and processes (fcntl on a lock file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- building ----------------------------------------------------------------------------------------


@dataclass
class _File:
    path: str
    parquet: str
    rows: int
    schema: Any  # pyarrow.Schema
    notes: list[str]


def _candidates(g: pygit2.Repository, commit: pygit2.Commit) -> list[tuple[str, str]]:
    out = []
    for e in list_tree(g, commit, "", recursive=True):
        if e.type != "file":
            continue
        parts = e.path.split("/")
        if any(p.startswith(".") for p in parts) or parts[-1].lower().startswith("readme"):
            continue
        fmt = formats.format_of(e.path)
        if fmt is not None:
            out.append((e.path, fmt))
    return sorted(out)


def _open_source(
    g: pygit2.Repository,
    commit: pygit2.Commit,
    blobs: BlobStore,
    session: Session,
    repo: Repository,
    path: str,
) -> BinaryIO:
    view = files.file_view(g, commit, path)
    if view.lfs is None:
        return io.BytesIO(g[view.blob_id].data)
    if not files.stored(session, blobs, repo, view):
        raise formats.ConversionError("a Git LFS pointer whose content is not stored on this server")
    return blobs.open(view.lfs.oid)  # type: ignore[return-value]


def _convert(
    g: pygit2.Repository,
    commit: pygit2.Commit,
    blobs: BlobStore,
    session: Session,
    repo: Repository,
    base: Path,
    path: str,
    fmt: str,
) -> _File | None:
    dest = base / "tables" / (path + ".parquet")
    notes_file = base / "tables" / (path + ".notes.json")
    if fmt == "parquet" and not dest.exists():
        # Parquet is read in place (its footer now, its pages by the first rows asked for): the copy
        # DuckDB needs is made only when statistics or SQL first ask (`materialize`).
        src = _open_source(g, commit, blobs, session, repo, path)
        try:
            with pq.ParquetFile(src) as meta:
                schema = meta.schema_arrow.remove_metadata()
                return _File(path, str(dest), meta.metadata.num_rows, schema, [])
        except (pa.ArrowException, OSError) as exc:
            raise formats.ConversionError(f"not a valid Parquet file: {formats._first_line(exc)}") from exc
        finally:
            src.close()
    if not dest.exists():
        src = _open_source(g, commit, blobs, session, repo, path)
        try:
            if fmt in ("json", "xml"):
                fmt_found = formats.sniff(fmt, src.read(65536))
                src.seek(0)
                if fmt_found is None:
                    return None
                fmt = fmt_found
            done = formats.to_parquet(fmt, src, dest, tmp_dir=base / "tmp")
        finally:
            src.close()
        write_json_atomic(notes_file, done.notes)
    notes = json.loads(notes_file.read_text()) if notes_file.exists() else []
    with pq.ParquetFile(dest) as meta:
        return _File(path, str(dest), meta.metadata.num_rows, meta.schema_arrow.remove_metadata(), notes)


def open_table_file(
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    session: Session,
    repo: Repository,
    cat: Catalog,
    table: Table,
    index: int,
) -> str | BinaryIO:
    """The `index`-th Parquet file of a table for reading: its derived path once it exists, else the
    source Parquet file itself (from git or the blob store; the caller closes it)."""
    path = table.parquet[index]
    if Path(path).exists():
        return path
    g = store.open(repo.id)
    return _open_source(g, g[cat.commit].peel(pygit2.Commit), blobs, session, repo, table.sources[index])


def materialize(
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    session: Session,
    repo: Repository,
    cat: Catalog,
    tables: list[Table] | None = None,
) -> None:
    """Make sure the Parquet files of these tables (default: all) exist in the derived area, copying the
    Parquet sources read in place so far: DuckDB (statistics, SQL) reads files by path. Once per commit,
    under the commit's lock."""
    todo = [
        (src, Path(p))
        for t in (cat.tables if tables is None else tables)
        for src, p in zip(t.sources, t.parquet, strict=True)
        if not Path(p).exists()
    ]
    if not todo:
        return
    g = store.open(repo.id)
    commit = g[cat.commit].peel(pygit2.Commit)
    base = derived_dir(settings, cat.commit)
    with file_lock(base / "catalog.lock"):
        for src_path, dest in todo:
            if dest.exists():
                continue
            src = _open_source(g, commit, blobs, session, repo, src_path)
            try:
                formats.to_parquet("parquet", src, dest, tmp_dir=base / "tmp")
            finally:
                src.close()


def _build(
    settings: Settings,
    g: pygit2.Repository,
    commit: pygit2.Commit,
    blobs: BlobStore,
    session: Session,
    repo: Repository,
    base: Path,
) -> Catalog:
    converted: dict[str, _File] = {}
    errors: list[FileError] = []
    readme: str | None = None
    with suppress(KeyError):
        readme = g[commit.tree["README.md"].id].data.decode("utf-8", "replace")
    for path, fmt in _candidates(g, commit):
        try:
            f = _convert(g, commit, blobs, session, repo, base, path, fmt)
        except formats.ConversionError as exc:
            errors.append(FileError(path, str(exc)))
            continue
        except Exception as exc:  # user data: whatever a reader raises is this file's problem only
            log.warning("table file %s at %s unreadable", path, commit.id, exc_info=True)
            errors.append(FileError(path, f"cannot read: {formats._first_line(exc)}"))
            continue
        if f is not None:
            converted[path] = f
    groups = _groups(list(converted), card_configs(readme))
    tables = _tables(groups, converted)
    return Catalog(str(commit.id), tables, errors)


# --- grouping ----------------------------------------------------------------------------------------


def card_configs(readme: str | None) -> list[tuple[str, list[str]]]:
    """The (table name, globs) the dataset card's `configs` declares, in order (empty if none or
    unreadable)."""
    if not readme or not readme.startswith("---"):
        return []
    end = readme.find("\n---", 3)
    if end < 0:
        return []
    import yaml

    try:
        meta = yaml.safe_load(readme[3:end])
    except yaml.YAMLError:
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list):
        return []
    out: list[tuple[str, list[str]]] = []
    for cfg in configs:
        if not isinstance(cfg, dict):
            continue
        name = str(cfg.get("config_name") or "default")
        splits = _splits(cfg.get("data_files"))
        for split, globs in splits:
            table = split if name == "default" else (name if len(splits) == 1 else f"{name}_{split}")
            out.append((table, globs))
    return out


def _splits(data_files: Any) -> list[tuple[str, list[str]]]:
    def globs(v: Any) -> list[str]:
        if isinstance(v, str):
            return [v]
        return [str(x) for x in v] if isinstance(v, list) and all(isinstance(x, str) for x in v) else []

    if isinstance(data_files, (str, list)) and globs(data_files):
        return [("train", globs(data_files))]
    if isinstance(data_files, dict):  # {split: glob(s)}, also seen in cards
        return [(str(k), globs(v)) for k, v in data_files.items() if globs(v)]
    if isinstance(data_files, list):
        return [
            (str(d.get("split") or "train"), globs(d.get("path")))
            for d in data_files
            if isinstance(d, dict) and globs(d.get("path"))
        ]
    return []


def _glob_re(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    pattern = pattern.lstrip("./") if pattern.startswith("./") else pattern
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _convention(path: str) -> tuple[str, str]:
    """(folder, table name) of a file by the file-name conventions."""
    folder, _, fname = path.rpartition("/")
    stem = fname.split(".", 1)[0] if not fname.startswith(".") else fname
    last = folder.rsplit("/", 1)[-1]
    if last.lower() in SPLITS:
        return folder, last
    m = _SHARD.match(stem)
    base = m.group("base") if m else stem
    for split in SPLITS:
        if stem.lower().startswith(split) and stem[len(split) : len(split) + 1] in ("-", "_", "."):
            base = stem[: len(split)]
            break
    if _GENERIC.match(base) or _GENERIC.match(stem):
        base = last or "data"
    return folder, base


def _groups(paths: list[str], configs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str], bool]]:
    """(name, paths, declared) of each table, before schema checks and renaming: first the tables the
    dataset card declares, then the others by the file-name conventions (files of different formats are
    never one table: `same.csv` and `same.parquet` are two)."""
    claimed: set[str] = set()
    groups: list[tuple[str, list[str], bool]] = []
    for name, globs in configs:
        regexes = [_glob_re(g) for g in globs]
        members = [p for p in paths if any(r.match(p) for r in regexes)]
        if members:
            groups.append((name, members, True))
            claimed.update(members)
    by_key: dict[tuple[str, str, str], list[str]] = {}
    for p in paths:
        if p not in claimed:
            folder, name = _convention(p)
            by_key.setdefault((folder, name, formats.format_of(p) or ""), []).append(p)
    groups.extend((name, members, False) for (_, name, _), members in by_key.items())
    return groups


def _stem(path: str) -> str:
    fname = path.rsplit("/", 1)[-1]
    return fname.split(".", 1)[0] or fname


def _by_folder(name: str, fs: list[_File]) -> str:
    folder = fs[0].path.rpartition("/")[0]
    return "_".join(x for x in (folder.replace("/", "_"), name) if x)


def _by_path(fs: list[_File]) -> str:
    return fs[0].path.replace("/", "_").replace(".", "_")


def _unique_names(pieces: list[tuple[str, list[_File], list[str], bool]]) -> list[str]:
    """A name per piece, unique: names the dataset card declares are kept; other colliding names are
    made unique by their folder, then by their whole path."""
    declared = {name for name, _, _, card in pieces if card}
    counts: dict[str, int] = {}
    for name, _, _, _ in pieces:
        counts[name] = counts.get(name, 0) + 1
    names = [
        name if card or (counts[name] == 1 and name not in declared) else _by_folder(name, fs)
        for name, fs, _, card in pieces
    ]
    again: dict[str, int] = {}
    for name in names:
        again[name] = again.get(name, 0) + 1
    names = [
        _by_path(fs) if again[name] > 1 and not card else name
        for name, (_, fs, _, card) in zip(names, pieces, strict=True)
    ]
    out, taken = [], set()
    for name in names:
        while name in taken:
            name += "_"
        taken.add(name)
        out.append(name)
    return out


def _tables(groups: list[tuple[str, list[str], bool]], converted: dict[str, _File]) -> list[Table]:
    pieces: list[tuple[str, list[_File], list[str], bool]] = []
    for name, members, card in groups:
        fs = [converted[p] for p in members]
        if all(f.schema.equals(fs[0].schema) for f in fs[1:]):
            pieces.append((name, fs, [], card))
        else:
            note = f"files of table {name!r} differ in schema: each is a table of its own"
            pieces.extend((_stem(f.path), [f], [note], False) for f in fs)
    tables = []
    for name, (_, fs, notes, _) in zip(_unique_names(pieces), pieces, strict=True):
        schema = fs[0].schema
        tables.append(
            Table(
                name=name,
                num_rows=sum(f.rows for f in fs),
                columns=[Column(fld.name, str(fld.type)) for fld in schema],
                sources=[f.path for f in fs],
                parquet=[f.parquet for f in fs],
                parquet_rows=[f.rows for f in fs],
                notes=notes + [f"{f.path}: {n}" for f in fs for n in f.notes],
            )
        )
    return tables
