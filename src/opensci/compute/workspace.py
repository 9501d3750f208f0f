"""A job's directory: the code checked out, inputs in place, the environment, the sandbox, `job.json`;
and, when it has run, its outputs committed with their provenance.

    HOME/jobs/<id>/  owner  job.json  shim.py  log  running.json  status.json  shim.err
                     work/            the code at the resolved commit (the command's working directory)
                     work/inputs/<name>/  each input dataset at its resolved commit, read-only
                     work/outputs/    what the job writes here becomes one commit on the output branch
                     home/            the command's HOME
                     tmp/  shm/       the sandbox's /tmp and /dev/shm (on disk: not memory the limit misses)
`owner` names the job the directory belongs to (id and submission time): a directory left by an earlier
job with the same id (a database restored from a backup) is removed when the job is submitted and when
it starts, never appended to or shown as the new job's.
Large files of inputs come from a cache of materialized objects (`HOME/jobs/objects/<oid>`, one copy
per content whatever the number of jobs) as hard links when the sandbox makes them read-only, else as
copies (an unsandboxed job running as the server's user could write through a link).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import pygit2
from sqlalchemy.orm import Session

from opensci.compute import envs
from opensci.compute.executors.base import Launch, Resources
from opensci.compute.models import Job
from opensci.compute.shim import BLOCK_FD, COMMAND_FILE, INFO_FD, REPORT_FD, human_size
from opensci.errors import OpenSciError
from opensci.repos.gitstore import GitStore
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import files
from opensci.storage.store import BlobStore

SHIM = Path(__file__).with_name("shim.py")


class PrepareError(Exception):
    """The job cannot be set up (a repository is gone, a large file is missing…); the message says why."""


def job_dir(settings: Settings, job_id: int) -> Path:
    return settings.jobs_dir / str(job_id)


def objects_dir(settings: Settings) -> Path:
    return settings.jobs_dir / "objects"


def note(log: IO[bytes], text: str) -> None:
    log.write(f"[opensci] {text}\n".encode("utf-8", "backslashreplace"))
    log.flush()


# --- sandbox ---------------------------------------------------------------------------------------------


def _privileged() -> bool:
    """Whether bubblewrap runs as root here (the server's user): then the sandbox drops to
    the job's own user itself (`sandbox_user`); otherwise bubblewrap maps 65534 onto the server's user."""
    return os.geteuid() == 0


def _isolation(host_network: bool) -> list[str]:
    """Namespaces and privileges. As root, bubblewrap keeps only the capabilities to change users, which
    the reaper uses to become the job's own host user (`sandbox_user`: it owns nothing of the host) before
    the command starts; unprivileged, a user namespace of its own maps that user onto the server's and
    forbids nested ones. Either way the command has no capability and `no_new_privs` set."""
    if _privileged():
        a = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        return a if host_network else [*a, "--unshare-net"]
    a = ["--die-with-parent", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534"]
    a += ["--disable-userns", "--cap-drop", "ALL"]
    return [*a, "--share-net"] if host_network else a


@functools.cache
def _bwrap_works(bwrap: str) -> bool:
    try:
        probe = subprocess.run(
            [bwrap, *_isolation(host_network=False), "--ro-bind", "/", "/", "--proc", "/proc", "true"],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def sandbox_tool(settings: Settings, executor: str = "local") -> str | None:
    """The bubblewrap binary when the executor's jobs are sandboxed, else None (settings `compute_sandbox`,
    `compute_slurm_sandbox`: Slurm jobs run it on the nodes, at the path it has here)."""
    mode = settings.compute_slurm_sandbox if executor == "slurm" else settings.compute_sandbox
    if mode == "none":
        return None
    bwrap = shutil.which("bwrap")
    if bwrap and _bwrap_works(bwrap):
        return bwrap
    if mode == "bwrap":
        raise PrepareError("the sandbox (bubblewrap) is required by the settings but does not work here")
    return None


def sandbox_user(settings: Settings, job_id: int) -> tuple[int, int] | None:
    """(uid, gid) a root server's sandboxed job runs as: a host user of its own (see the setting
    `compute_sandbox_uid_base`); None when the server is not root."""
    if not _privileged():
        return None
    uid = settings.compute_sandbox_uid_base + job_id % 65536
    try:
        taken = pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, uid
    raise PrepareError(
        f"uid {uid} for this job's sandbox belongs to the host's user {taken!r}: choose a range that holds "
        "no user (OPENSCI_COMPUTE_SANDBOX_UID_BASE)"
    )


REAPER = "/opensci/shim.py"  # where the shim is inside the sandbox (read-only), to run as the reaper


def sandboxed(
    bwrap: str,
    *,
    job: Path,
    inputs: Path,
    env_path: Path,
    python: str,
    network: bool,
    slirp: bool,
    user: tuple[int, int] | None,
    max_processes: int,
) -> list[str]:
    """What runs a command (given after this, which ends with `--`) inside bubblewrap, as an unprivileged user
    without capabilities: the system's programs and libraries read-only, the job's working directory and
    home writable, its inputs and environment read-only, /tmp and /dev/shm on the job's disk, /proc/sys
    and the rest of / read-only, and no network unless asked: a network of its own through slirp4netns
    (`slirp`, see `shim.Network`), or else the host's. Nothing else of the host (its users' homes, the
    platform's data) is there. The command runs under the shim's reaper (see `shim.reap`), which takes the
    command's environment from a file (bubblewrap itself runs with none of the job's variables), becomes
    `user` when bubblewrap runs as root, and reports the command's exit status and CPU time."""
    work, home = job / "work", job / "home"
    a = [bwrap, *_isolation(host_network=network and not slirp), "--hostname", "opensci-job"]
    a += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    if network and slirp:  # slirp4netns's DNS forwarder; the command waits until the network is there
        a += ["--ro-bind", str(job / "resolv.conf"), "/etc/resolv.conf"]
        a += ["--info-fd", INFO_FD, "--block-fd", BLOCK_FD]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            a += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            a += ["--ro-bind", top, top]
    a += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
    a += ["--dev", "/dev", "--bind", str(job / "shm"), "/dev/shm", "--remount-ro", "/dev"]
    a += ["--bind", str(job / "tmp"), "/tmp"]
    prefix = Path(os.path.realpath(envs.base_python_of(env_path))).parent.parent
    own = [env_path, work, inputs, home]
    if not str(prefix).startswith("/usr/"):  # an interpreter of its own (pyenv, conda …)
        own.insert(0, prefix)
    a += _folders_above(own)
    if prefix in own:
        a += ["--ro-bind", str(prefix), str(prefix)]
    a += ["--ro-bind", str(env_path), str(env_path)]
    a += ["--bind", str(work), str(work), "--ro-bind", str(inputs), str(inputs)]
    a += ["--bind", str(home), str(home), "--ro-bind", str(job / "shim.py"), REAPER]
    a += ["--ro-bind", str(job / COMMAND_FILE), f"/opensci/{COMMAND_FILE}"]
    a += ["--remount-ro", "/", "--chdir", str(work), "--"]
    reaper = [python, "-S", "-I", REAPER, "--reap", REPORT_FD, "--nproc", str(max_processes)]
    if user is not None:
        reaper += ["--user", f"{user[0]}:{user[1]}"]
    return [*a, *reaper, "--"]


def _folders_above(paths: list[Path]) -> list[str]:
    """Make the folders above these mount points in the sandbox readable by all (bubblewrap makes missing
    ones private, as /root is, which the sandbox user could not pass through)."""
    made: list[Path] = []
    for path in paths:
        for folder in reversed(path.parents):
            if folder != Path("/") and folder not in made and str(folder) not in _SYSTEM:
                made.append(folder)
    return [arg for folder in made for arg in ("--perms", "0755", "--dir", str(folder))]


_SYSTEM = {"/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/dev", "/tmp"}


def _give(root: Path, user: tuple[int, int], *, keep: Path | None = None) -> None:
    """Make `root` and what is below it (but `keep`) the sandbox user's, for a job that runs as it."""
    os.chown(root, *user)
    for dirpath, dirnames, filenames in os.walk(root):
        if keep is not None and Path(dirpath) == keep.parent and keep.name in dirnames:
            dirnames.remove(keep.name)
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), *user, follow_symlinks=False)


# --- the job's directory ---------------------------------------------------------------------------------


def _owner_key(job: Job) -> str:
    return f"{job.id} {job.created_at.isoformat()}\n"


def _belongs(jd: Path, job: Job) -> bool:
    """Whether the job directory is this job's (not one left by an earlier job with the same id)."""
    try:
        return (jd / "owner").read_text() == _owner_key(job)
    except FileNotFoundError:
        # Made before directories had owners: this job's if it was made after the job was submitted.
        try:
            made = jd.stat().st_mtime
        except FileNotFoundError:
            return False
        return made >= job.created_at.timestamp() - 1
    except OSError:
        return False


def claim_dir(settings: Settings, job: Job) -> Path:
    """The job's directory, made (or taken back from an earlier job with the same id) for it."""
    jd = job_dir(settings, job.id)
    if jd.exists() and not _belongs(jd, job):
        _remove(jd)
    jd.mkdir(parents=True, exist_ok=True)
    owner = jd / "owner"
    if not owner.exists():
        owner.write_text(_owner_key(job))
    return jd


# --- trees -------------------------------------------------------------------------------------------------


def _walk(
    g: pygit2.Repository, tree: pygit2.Tree, base: str = ""
) -> Iterator[tuple[str, pygit2.Object, int]]:
    for e in tree:
        path = f"{base}{e.name}"
        if e.type_str == "tree":
            yield from _walk(g, g[e.id], path + "/")
        elif e.type_str == "blob":
            yield path, g[e.id], e.filemode


COPY_BLOCK = 4 * 1024**2
_ZEROS = bytes(COPY_BLOCK)


def copy_sparse(src: BinaryIO, dst: BinaryIO) -> int:
    """Copy a stream into a file, leaving blocks of zeros as holes (a job's 4 GiB of zeros, which the blob
    store keeps as one chunk, must not become 4 GiB of disk); returns the bytes copied."""
    total = 0
    while block := src.read(COPY_BLOCK):
        if block == _ZEROS[: len(block)]:
            dst.seek(len(block), os.SEEK_CUR)
        else:
            dst.write(block)
        total += len(block)
    dst.truncate(total)  # a hole at the end still counts in the size
    return total


def _cached_object(settings: Settings, blobs: BlobStore, oid: str, size: int) -> Path:
    """The content of a stored object as a file of the cache, written once (atomically, sparse) on first
    use; the cache is then trimmed to `compute_input_cache_bytes`."""
    cache = objects_dir(settings)
    path = cache / oid
    if path.exists() and path.stat().st_size == size:
        os.utime(path)  # recently used: trimmed last
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{oid}.{uuid.uuid4().hex}.tmp"  # jobs of one server prepare the same input at once
    try:
        with blobs.open(oid) as src, open(tmp, "wb") as dst:
            copy_sparse(src, dst)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    trim_cache(settings, keep=path)
    return path


def trim_cache(settings: Settings, keep: Path | None = None) -> int:
    """Remove the least recently used cached inputs no job links to any more (a link count of 1) until
    the cache's disk use is under `compute_input_cache_bytes`; returns the bytes freed."""
    limit = settings.compute_input_cache_bytes
    cache = objects_dir(settings)
    if not limit or not cache.is_dir():
        return 0
    entries = []
    for entry in os.scandir(cache):
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            entries.append((st.st_mtime, Path(entry.path), st.st_blocks * 512, st.st_nlink))
    used = sum(e[2] for e in entries)
    freed = 0
    for _, path, disk, links in sorted(entries, key=lambda e: e[0]):
        if used - freed <= limit:
            break
        if links == 1 and path != keep and not path.name.startswith("."):
            with contextlib.suppress(OSError):
                path.unlink()
                freed += disk
    return freed


def materialize(
    settings: Settings,
    session: Session,
    blobs: BlobStore,
    g: pygit2.Repository,
    repo: Repository,
    commit: pygit2.Commit,
    dest: Path,
    *,
    link: bool,
) -> tuple[int, int]:
    """Write the files of `commit` under `dest`, large files with their content; returns (files, bytes)."""
    count = total = 0
    for path, blob, mode in _walk(g, commit.tree):
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == pygit2.enums.FileMode.LINK:
            os.symlink(blob.data, target)
            continue
        info = files.pointer_of(blob)
        if info is not None and files.holds(session, repo.id, info.oid) and blobs.has(info.oid):
            source = _cached_object(settings, blobs, info.oid, info.size)
            if link:
                os.link(source, target)
            else:
                with open(source, "rb") as src, open(target, "wb") as dst:
                    copy_sparse(src, dst)
            total += info.size
        else:
            target.write_bytes(blob.data)
            total += blob.size
        if mode == pygit2.enums.FileMode.BLOB_EXECUTABLE:
            target.chmod(0o755)
        count += 1
    return count, total


def _read_only(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink() and not os.stat(p).st_nlink > 1:
                p.chmod(0o444)
        os.chmod(dirpath, 0o555)


# --- preparing -------------------------------------------------------------------------------------------


def _open(
    session: Session, store: GitStore, ref: dict[str, Any]
) -> tuple[Repository, pygit2.Repository, pygit2.Commit]:
    repo = session.get(Repository, ref["repo_id"])
    if repo is None:
        raise PrepareError(f"repository {ref['repo']} no longer exists")
    g = store.open(repo.id)
    try:
        commit = g[ref["commit"]]
    except (KeyError, ValueError) as exc:
        raise PrepareError(f"commit {ref['commit'][:12]} of {ref['repo']} no longer exists") from exc
    return repo, g, commit


def prepare(
    settings: Settings,
    session: Session,
    store: GitStore,
    blobs: BlobStore,
    job: Job,
    log: IO[bytes],
) -> tuple[Launch, envs.JobEnv]:
    """Set up the job's directory and return how to launch it. Raises PrepareError or envs.EnvError."""
    jd = claim_dir(settings, job)
    work, home = jd / "work", jd / "home"
    leftovers = ("tmp", "shm", "running.json", "status.json", "resolv.conf")
    for old in (work, home, *(jd / name for name in leftovers)):
        if old.exists() or old.is_symlink():
            _remove(old)
    work.mkdir(parents=True)
    home.mkdir()
    spec, resolved = job.spec, job.resolved
    bwrap = sandbox_tool(settings, job.executor)
    try:
        code = resolved["code"]
        repo, g, commit = _open(session, store, code)
        n, size = materialize(settings, session, blobs, g, repo, commit, work, link=False)
        note(log, f"code {code['repo']} at {code['commit'][:12]}: {n} files, {human_size(size)}")
        for top in ("inputs", "outputs"):
            if (work / top).exists() or (work / top).is_symlink():
                note(log, f"the code has its own {top}/; it is replaced by the job's")
                _remove(work / top)
        inputs = work / "inputs"
        inputs.mkdir()
        for name, ref in resolved["inputs"].items():
            repo, g, commit = _open(session, store, ref)
            n, size = materialize(
                settings, session, blobs, g, repo, commit, inputs / name, link=bwrap is not None
            )
            note(log, f"input {name}: {ref['repo']} at {ref['commit'][:12]}: {n} files, {human_size(size)}")
        _read_only(inputs)
        (work / "outputs").mkdir()
    except OpenSciError as exc:
        raise PrepareError(exc.message) from exc
    requirements = list(spec.get("env", {}).get("requirements", []))
    env = envs.ensure_env(settings, requirements, log)
    argv = list(spec["command"])
    variables = dict(spec.get("env", {}).get("variables", {}))
    run_env = {
        **variables,
        "PATH": f"{env.path}/bin:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(env.path),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": "/tmp" if bwrap else str(home),
        "OPENSCI_JOB_ID": str(job.id),
        "OPENSCI_INPUTS": str(work / "inputs"),
        "OPENSCI_OUTPUTS": str(work / "outputs"),
        **{k: str(job.cpus) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    network_spec = None
    if bwrap:
        network = bool(spec.get("env", {}).get("network", False))
        slirp = shutil.which("slirp4netns") if network else None
        if slirp:
            (jd / "resolv.conf").write_text("nameserver 10.0.2.3\n")
            network_spec = {"slirp": slirp, "userns": not _privileged()}
        user = sandbox_user(settings, job.id)
        (jd / "tmp").mkdir()
        (jd / "shm").mkdir()
        if user is not None:  # what the job may write becomes the sandbox user's
            _give(work, user, keep=work / "inputs")
            for d in (home, jd / "tmp", jd / "shm"):
                _give(d, user)
        prefix = sandboxed(
            bwrap,
            job=jd,
            inputs=work / "inputs",
            env_path=env.path,
            python=envs.base_python(settings),
            network=network,
            slirp=bool(slirp),
            user=user,
            max_processes=settings.compute_max_processes,
        )
        if not network:
            how = "off"
        elif slirp:
            how = "on (a network of its own: the host's loopback services are out of reach)"
        else:
            how = "on (the host's: without slirp4netns, services on the host's loopback are reachable)"
        note(log, f"sandbox: bubblewrap, network {how}, inputs read-only")
    else:
        prefix = []
        note(log, "sandbox: none (bubblewrap is not available or is turned off)")
    # Root-only: it holds the job's variables (the shim reads it as the user the executor runs it as).
    fd = os.open(jd / "job.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "job_id": job.id,
                "argv": prefix,  # the sandbox and its reaper, or nothing; the shim fills in its pipes
                "command": argv,
                "workdir": str(work),
                "env": run_env,
                "time_limit": job.time_limit,
                "memory_bytes": job.memory_bytes,
                "cpus": job.cpus,
                "kill_grace": 3,
                "max_log_bytes": settings.compute_max_log_bytes,
                "sandboxed": bool(bwrap),
                "network": network_spec,
                # The local executor's jobs get control groups of their own where the shim may make them
                # (root): a hard memory limit that also counts memory the process tree does not show
                # (memfd, tmpfs), a process limit, and exact CPU time. Slurm does this on its nodes.
                "cgroups": job.executor == "local",
                "max_processes": settings.compute_max_processes,
            },
            f,
        )
    shutil.copyfile(SHIM, jd / "shim.py")
    launch = Launch(
        job_id=job.id,
        job_dir=jd,
        argv=[envs.base_python(settings), str(jd / "shim.py"), str(jd)],
        resources=resources_of(job),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
    )
    return launch, env


def resources_of(job: Job) -> Resources:
    return Resources(cpus=job.cpus, memory_bytes=job.memory_bytes, time_limit=job.time_limit, gpus=job.gpus)


def launch_of(settings: Settings, job: Job) -> Launch:
    """The launch of a job already submitted (what poll and cancel need), rebuilt from its row."""
    jd = job_dir(settings, job.id)
    return Launch(job.id, jd, [envs.base_python(settings), str(jd / "shim.py"), str(jd)], resources_of(job))


def _remove(path: Path) -> None:
    """Remove a file or a whole tree, however deep a job made it and whatever modes it left (coreutils
    walk trees with file descriptors: no recursion limit, no path too long); links are not followed."""
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    if os.geteuid() != 0:  # read-only folders (inputs) first become writable again
        subprocess.run(["chmod", "-R", "u+rwx", "--", str(path)], capture_output=True, check=False)
    done = subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True)
    if done.returncode != 0 or path.exists():
        raise OSError(f"could not remove {path}: {done.stderr.decode(errors='replace').strip()[-300:]}")


def clean(settings: Settings, job_id: int) -> None:
    """Remove a finished job's working directory and home (the log and status stay); the cached inputs
    it used may then go, if the cache is over its budget."""
    jd = job_dir(settings, job_id)
    for d in (jd / "work", jd / "home", jd / "tmp", jd / "shm"):
        if d.exists() or d.is_symlink():
            _remove(d)
    trim_cache(settings)
