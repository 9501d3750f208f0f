"""What a job cannot do, on a live server with the local executor and the bubblewrap sandbox: reach
outside its directory through `outputs/`, keep privileges (even when the server runs as root), hide
memory in a RAM-backed /tmp, fill the disk with its log, or see another job's directory; and what it
is told about itself (its real CPU time, a clear 127 for a missing program)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.api_helpers import API
from tests.compute.conftest import code_repo, dataset, finished, logs, submit, wait
from tests.conftest import Account, LiveServer, need, need_binary

SH = {"run.sh": "#!/bin/sh\n"}


def run(http: httpx.Client, who: Account, command: list[str], **extra: object) -> tuple[dict, str]:
    job = submit(http, who, {"code": {"repo": f"{who.name}/tool"}, "command": command, **extra})
    done = finished(http, who, job["id"])
    return done, logs(http, who, job["id"])


def test_outputs_that_link_outside_the_job_commit_nothing(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    home = compute_app.state.settings.home.resolve()
    code_repo(http, alice, "tool", SH)
    dataset(http, alice, "loot", {"README.md": "mine\n"})
    before = http.get(f"{API}/repos/alice/loot/commits", headers=alice.headers).json()
    done, text = run(
        http, alice, ["sh", "-c", f"rmdir outputs && ln -s {home} outputs"], output={"repo": "alice/loot"}
    )
    assert done["status"] == "failed" and done["reason"] == "outputs", (done, text)
    assert "outputs/ is a link" in done["message"]
    after = http.get(f"{API}/repos/alice/loot/commits", headers=alice.headers).json()
    assert after == before
    # The server's database is intact (nothing read its files in-process and dropped its locks).
    assert http.get(f"{API}/repos/alice/loot", headers=alice.headers).status_code == 200

    # Links inside outputs/ are neither followed nor committed; the regular files are.
    done, text = run(
        http,
        alice,
        [
            "sh",
            "-c",
            f"ln -s {home} outputs/home && ln -s /etc/passwd outputs/pw && echo ok > outputs/ok.txt",
        ],
        output={"repo": "alice/loot"},
    )
    assert done["status"] == "succeeded", (done, text)
    tree = http.get(f"{API}/repos/alice/loot/tree/main", headers=alice.headers).json()
    names = {e["path"] for e in tree["entries"]}
    assert "ok.txt" in names and "home" not in names and "pw" not in names
    assert "outputs/home is a link, not followed: not committed" in text
    assert "outputs/pw is a link, not followed: not committed" in text


def test_a_file_name_a_repository_cannot_hold_is_skipped_not_fatal(
    http: httpx.Client, alice: Account
) -> None:
    code_repo(http, alice, "tool", SH)
    dataset(http, alice, "out", None)
    done, text = run(
        http,
        alice,
        [
            "sh",
            "-c",
            "echo a > 'outputs/back\\slash.txt' && mkdir -p outputs/.git && echo b > outputs/.git/x "
            "&& echo c > outputs/good.txt",
        ],
        output={"repo": "alice/out"},
    )
    assert done["status"] == "succeeded", (done, text)
    tree = http.get(f"{API}/repos/alice/out/tree/main", headers=alice.headers).json()
    assert {e["path"] for e in tree["entries"]} == {"good.txt"}
    assert "has a name a repository cannot hold" in text and "back\\slash.txt" in text


ESCAPE = """\
import json, os, pathlib, subprocess
r = {"uid": os.getuid()}
r["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
r["remount"] = subprocess.run(["mount", "-o", "remount,bind,rw", "inputs"], capture_output=True).returncode
try:
    pathlib.Path("inputs/d/values.csv").write_text("poisoned")
    r["input_written"] = True
except OSError:
    r["input_written"] = False
try:
    (pathlib.Path(os.environ["VIRTUAL_ENV"]) / "poison.py").write_text("x")
    r["env_written"] = True
except OSError:
    r["env_written"] = False
for where in ("/", "/dev", "/tmp", "/dev/shm"):
    try:
        (pathlib.Path(where) / "probe").write_text("x")
        r[where] = os.statvfs(where).f_bsize and open("/proc/mounts").read().count(" " + where + " tmpfs")
    except OSError:
        r[where] = "read-only"
pathlib.Path("outputs/r.json").write_text(json.dumps(r))
"""


def test_jobs_have_no_privileges_and_no_memory_backed_scratch_space(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    need_binary("bwrap")
    code_repo(http, alice, "tool", {"escape.py": ESCAPE})
    dataset(http, alice, "d", {"values.csv": "v\n1\n"})
    dataset(http, alice, "out", None)
    done, text = run(
        http, alice, ["python", "escape.py"], inputs={"d": {"repo": "alice/d"}}, output={"repo": "alice/out"}
    )
    assert done["status"] == "succeeded", (done, text)
    r = http.get(f"/datasets/alice/out/resolve/{done['output']['commit']}/r.json").json()
    assert r["uid"] != 0 and r["cap_eff"] == "0000000000000000", r
    assert r["remount"] != 0 and not r["input_written"] and not r["env_written"], r
    # / and /dev are read-only; /tmp and /dev/shm are writable, and on the job's disk, not in memory.
    assert r["/"] == "read-only" and r["/dev"] == "read-only", r
    assert r["/tmp"] == 0 and r["/dev/shm"] == 0, r
    # The input's content in the shared cache of large files is untouched.
    files = http.get("/datasets/alice/d/resolve/main/values.csv").text
    assert files == "v\n1\n"


USERNS = """\
import ctypes, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
print("unshare:", ctypes.get_errno() if libc.unshare(0x10000000) else "allowed")  # CLONE_NEWUSER
tool = subprocess.run(["unshare", "-Ur", "id"], capture_output=True, text=True)
print("unshare -Ur:", tool.returncode, tool.stderr.strip())
done = []
worker = threading.Thread(target=done.append, args=["thread ran"])
worker.start()
worker.join()
print(done[0], subprocess.run(["sh", "-c", "echo child ran"], capture_output=True, text=True).stdout.strip())
"""


def test_jobs_cannot_make_user_namespaces(http: httpx.Client, alice: Account) -> None:
    """The QA finding: a root server's jobs could make user namespaces (`unshare -Ur id` said root), which
    open kernel interfaces an unprivileged user never reaches. A seccomp filter refuses them; threads and
    child processes work as before."""
    need_binary("bwrap")
    code_repo(http, alice, "tool", {"try.py": USERNS})
    done, text = run(http, alice, ["python", "try.py"])
    assert done["status"] == "succeeded", (done, text)
    assert "unshare: 1" in text, text  # EPERM
    assert "unshare -Ur: 1" in text and "uid=0" not in text, text
    assert "thread ran child ran" in text, text


def test_cpu_time_is_the_commands_and_a_missing_program_exits_127(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "tool", SH)
    done, text = run(
        http,
        alice,
        ["python", "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"],
    )
    assert done["status"] == "succeeded", (done, text)
    assert done["usage"]["cpu_seconds"] >= 0.9, done["usage"]

    done, text = run(http, alice, ["no-such-program-here", "x"])
    assert done["status"] == "failed" and done["exit_code"] == 127, done
    assert "could not start the command" in done["message"] and "no-such-program-here" in text
    # A file that is there but is no program: 126, as a shell says.
    done, text = run(http, alice, ["./run.sh"])  # not executable
    assert done["status"] == "failed" and done["exit_code"] == 126, (done, text)
    assert "Permission denied" in done["message"], done


def test_a_chatty_job_keeps_only_the_start_of_its_output(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    compute_app.state.settings.compute_max_log_bytes = 100_000
    code_repo(http, alice, "tool", SH)
    done, text = run(http, alice, ["python", "-c", "import sys\nfor i in range(100000): print('x' * 99)"])
    assert done["status"] == "succeeded", (done, text)
    assert text.count("x" * 99) == 1000  # 100,000 bytes of 10,000,000
    assert "the log reached its limit of 97.7 KiB" in text
    assert "9.4 MiB of output past the log's limit were not kept" in text


def test_a_new_job_never_shows_a_directory_left_by_an_earlier_job_with_its_id(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    code_repo(http, alice, "tool", SH)
    first, _ = run(http, alice, ["true"])
    jobs = compute_app.state.settings.jobs_dir
    stale = jobs / str(first["id"] + 1)  # as after a database restored from a backup
    stale.mkdir(parents=True)
    (stale / "log").write_text("SECRET of an earlier job\n")
    past = time.time() - 3600
    os.utime(stale, (past, past))
    done, text = run(http, alice, ["echo", "hello"])
    assert done["id"] == first["id"] + 1
    assert done["status"] == "succeeded" and "hello" in text
    assert "SECRET" not in text and "SECRET" not in Path(stale / "log").read_text()


def test_network_can_be_refused_by_the_operator_and_branch_names_take_refs_heads(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    code_repo(http, alice, "tool", SH)
    dataset(http, alice, "out", None)
    compute_app.state.settings.compute_allow_network = False
    spec = {"code": {"repo": "alice/tool"}, "command": ["true"], "env": {"network": True}}
    r = http.post(f"{API}/jobs", json=spec, headers=alice.headers)
    assert r.status_code == 422 and "OPENSCI_COMPUTE_ALLOW_NETWORK" in r.json()["message"], r.text
    spec = {
        "code": {"repo": "alice/tool"},
        "command": ["sh", "-c", "echo 1 > outputs/x"],
        "output": {"repo": "alice/out", "branch": "refs/heads/results"},
    }
    job = submit(http, alice, spec)
    done = finished(http, alice, job["id"])
    assert done["status"] == "succeeded" and done["output"]["branch"] == "results", done
    refs = http.get(f"{API}/repos/alice/out/refs", headers=alice.headers).json()
    assert "results" in {b["name"] for b in refs["branches"]}


EVIL = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void escape(void) {
    FILE *f = fopen(MARKER, "a");
    if (f) { fprintf(f, "ran as uid %d\n", (int)getuid()); fclose(f); }
}
"""


def test_the_jobs_variables_reach_only_the_command_inside_the_sandbox(
    http: httpx.Client, alice: Account, tmp_path: Path
) -> None:
    """LD_PRELOAD (and the like) in a job's variables must not load the job's code into bubblewrap, which
    runs on the host (as root when the server is)."""
    need_binary("bwrap")
    gcc = need_binary("gcc")
    marker = tmp_path / "escaped"
    source = tmp_path / "evil.c"
    source.write_text(EVIL.replace("MARKER", f'"{marker}"'))
    lib = tmp_path / "evil.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    code_repo(http, alice, "tool", {"evil.so": lib.read_bytes()})
    for name in ("LD_PRELOAD", "LD_AUDIT"):
        done, text = run(http, alice, ["true"], env={"variables": {name: "./evil.so"}})
        assert not marker.exists(), (name, marker.read_text())
        assert done["status"] in ("succeeded", "failed"), (done, text)


HOST_ROOT = """\
import json, os, pathlib
r = {"uid": os.getuid()}
try:
    open("/etc/shadow").read()
    r["shadow"] = "read"
except OSError:
    r["shadow"] = "refused"
try:
    with open("/proc/sys/kernel/printk_ratelimit", "w") as f:
        f.write(open("/proc/sys/kernel/printk_ratelimit").read())
    r["proc_sys"] = "written"
except OSError:
    r["proc_sys"] = "refused"
pathlib.Path("outputs/r.json").write_text(json.dumps(r))
"""


def test_a_sandboxed_job_is_a_host_user_of_its_own(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    need_binary("bwrap")
    need(os.geteuid() == 0, "the server must run as root to run jobs as another host user")
    code_repo(http, alice, "tool", {"probe.py": HOST_ROOT})
    dataset(http, alice, "out", None)
    done, text = run(http, alice, ["python", "probe.py"], output={"repo": "alice/out"})
    assert done["status"] == "succeeded", (done, text)
    r = http.get(f"/datasets/alice/out/resolve/{done['output']['commit']}/r.json").json()
    uid = compute_app.state.settings.compute_sandbox_uid_base + done["id"]
    assert r == {"uid": uid, "shadow": "refused", "proc_sys": "refused"}, r


def need_cgroups() -> None:
    need(
        os.geteuid() == 0
        and (Path("/sys/fs/cgroup/memory").is_dir() or Path("/sys/fs/cgroup/cgroup.controllers").exists()),
        "cgroups need a root server and the memory controller",
    )


MEMFD = (
    "import os, time\nfd = os.memfd_create('x')\nfor _ in range(512): os.write(fd, b'x' * (1 << 20))\n"
    "time.sleep(2)"
)


def test_memory_no_process_shows_still_counts_against_the_limit(http: httpx.Client, alice: Account) -> None:
    """memfd and a tmpfs mounted in a nested namespace hold memory no process's resident memory shows:
    the job's control group counts it."""
    need_binary("bwrap")
    need_cgroups()
    code_repo(http, alice, "tool", SH)
    small = {"memory": "128M", "time_limit": 60}
    done, text = run(http, alice, ["python", "-c", MEMFD], resources=small)
    assert done["status"] == "failed" and done["reason"] == "memory", (done, text)
    tmpfs = "unshare -Urm sh -c 'mount -t tmpfs x /mnt && dd if=/dev/zero of=/mnt/f bs=1M count=512'"
    done, text = run(http, alice, ["sh", "-c", tmpfs], resources=small)
    # Either the nested namespace is refused, or its tmpfs is counted: never 512 MiB past the limit.
    assert done["status"] == "failed", (done, text)


THREADS = (
    "import threading, time\nfor _ in range(300): threading.Thread(target=time.sleep, args=(5,)).start()"
)


def test_processes_are_limited_and_cpu_time_counts_what_was_left_behind(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    need_binary("bwrap")
    need_cgroups()
    compute_app.state.settings.compute_max_processes = 64
    code_repo(http, alice, "tool", SH)
    done, text = run(http, alice, ["python", "-c", THREADS])
    assert done["status"] == "failed" and "can't start new thread" in text, (done, text)
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    orphan = f"(python -c '{busy}' &) ; sleep 2"
    done, text = run(http, alice, ["sh", "-c", orphan])
    assert done["status"] == "succeeded", (done, text)
    assert done["usage"]["cpu_seconds"] >= 0.9, done["usage"]


DEEP = """\
import os
for i in range(2100):
    os.mkdir("d")
    os.chdir("d")
open("bottom.txt", "w").write("deep")
"""

ODD = """\
import os
open("outputs/good.txt", "w").write("ok")
open(b"outputs/bad\\xffname", "w").write("z")
for i in range(60):
    os.symlink("/root" if i % 2 else "/nonexistent", f"outputs/link{i}")
"""


def test_odd_output_trees_skip_what_cannot_be_kept_and_commit_the_rest(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    code_repo(http, alice, "tool", {"deep.py": DEEP, "odd.py": ODD})
    dataset(http, alice, "out", None)
    done, text = run(
        http,
        alice,
        ["sh", "-c", "cd outputs && python ../deep.py && echo top > ../outputs/top.txt"],
        output={"repo": "alice/out"},
    )
    assert done["status"] == "succeeded", (done, text)
    assert "is deeper than 256 folders: not committed" in text
    tree = http.get(f"{API}/repos/alice/out/tree/main", headers=alice.headers).json()
    assert "top.txt" in {e["path"] for e in tree["entries"]}
    work = compute_app.state.settings.jobs_dir / str(done["id"]) / "work"
    deadline = time.monotonic() + 20
    while work.exists() and time.monotonic() < deadline:  # removed right after the status is recorded
        time.sleep(0.1)
    assert not work.exists()

    done, text = run(http, alice, ["python", "odd.py"], output={"repo": "alice/out"})
    assert done["status"] == "succeeded", (done, text)
    assert "outputs/bad\\xffname has a name that is not UTF-8 text: not committed" in text
    # Links are not resolved: one to an existing folder and one to nothing read the same.
    assert "outputs/link0 is a link, not followed" in text and "outputs/link1 is a link, not followed" in text
    assert "and 41 more entries of outputs/ are not committed" in text  # 61 skipped, 20 named
    files = http.get(f"{API}/repos/alice/out/tree/main", headers=alice.headers).json()["entries"]
    assert "good.txt" in {e["path"] for e in files}


def test_output_trailers_do_not_name_private_sources_to_a_public_outputs_readers(
    http: httpx.Client, alice: Account
) -> None:
    code_repo(http, alice, "tool", {"copy.sh": "cp inputs/secret/s.csv outputs/\n"}, private=True)
    dataset(http, alice, "secret", {"s.csv": "a\n1\n"}, private=True)
    dataset(http, alice, "public-out", None)
    dataset(http, alice, "private-out", None, private=True)
    for output, shown in (("alice/public-out", False), ("alice/private-out", True)):
        done, text = run(
            http,
            alice,
            ["sh", "copy.sh"],
            inputs={"secret": {"repo": "alice/secret"}},
            output={"repo": output},
        )
        assert done["status"] == "succeeded", (done, text)
        commit = http.get(f"{API}/repos/{output}/commits/{done['output']['commit']}", headers=alice.headers)
        message = commit.json()["message"]
        assert ("alice/secret@" in message) is shown and ("alice/tool@" in message) is shown, message
        if not shown:
            assert "OpenSci-Input: secret=(a private repository)" in message
            assert "OpenSci-Code: (a private repository)" in message


REACH = """\
import json, os, pathlib, socket, sys
lines = open("/proc/net/dev").read().splitlines()[2:]
r = {"devices": sorted(line.split(":")[0].strip() for line in lines)}
def reach(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return True
    except OSError:
        return False
r["outside"] = reach(sys.argv[1], sys.argv[2])
r["loopback"] = reach("127.0.0.1", sys.argv[3])
r["host_loopback"] = reach("10.0.2.2", sys.argv[3])
pathlib.Path("outputs/r.json").write_text(json.dumps(r))
"""


def test_a_job_with_network_has_its_own_without_the_hosts_loopback(
    http: httpx.Client, alice: Account, server: LiveServer
) -> None:
    """Network on: the job reaches the world (here, a server on this machine's outward address) through
    slirp4netns, but not the services that listen only on the host's loopback (the platform, databases)."""
    need_binary("bwrap")
    need_binary("slirp4netns")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outward address
        address = probe.getsockname()[0]
    need(not address.startswith("127."), "this machine has no outward IPv4 address")
    outside = socket.socket()
    outside.bind((address, 0))
    outside.listen()
    try:
        code_repo(http, alice, "tool", {"reach.py": REACH})
        dataset(http, alice, "out", None)
        argv = ["python", "reach.py", address, str(outside.getsockname()[1]), str(server.port)]
        for _ in range(4):  # the network is made while bubblewrap sets the namespace up: never a race
            done, text = run(http, alice, argv, env={"network": True}, output={"repo": "alice/out"})
            assert done["status"] == "succeeded", (done, text)
        assert "a network of its own" in text
        r = http.get(f"/datasets/alice/out/resolve/{done['output']['commit']}/r.json").json()
        assert r == {"devices": ["lo", "tap0"], "outside": True, "loopback": False, "host_loopback": False}, r
    finally:
        outside.close()


def test_a_sparse_output_stays_sparse_as_another_jobs_input_and_outputs_are_bounded(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    """512 MiB of zeros is one chunk in the blob store; as another job's input it must not become 512 MiB
    of disk. And a job may not make the server read more output than OPENSCI_COMPUTE_MAX_OUTPUT_BYTES."""
    settings = compute_app.state.settings
    code_repo(http, alice, "tool", SH)
    dataset(http, alice, "zeros", None)
    done, text = run(http, alice, ["truncate", "-s", "512M", "outputs/z.bin"], output={"repo": "alice/zeros"})
    assert done["status"] == "succeeded", (done, text)
    done, text = run(http, alice, ["wc", "-c", "inputs/z/z.bin"], inputs={"z": {"repo": "alice/zeros"}})
    assert done["status"] == "succeeded" and "536870912" in text, (done, text)
    cached = list((settings.jobs_dir / "objects").iterdir())
    assert len(cached) == 1 and cached[0].stat().st_size == 512 * 1024**2
    assert cached[0].stat().st_blocks * 512 < 1024**2, "the cached input is not sparse"
    assert (settings.jobs_dir / str(done["id"]) / "job.json").stat().st_mode & 0o077 == 0  # holds variables

    settings.compute_max_output_bytes = 1024**2
    dataset(http, alice, "small", None)
    done, text = run(http, alice, ["truncate", "-s", "2M", "outputs/big.bin"], output={"repo": "alice/small"})
    assert done["status"] == "failed" and done["reason"] == "outputs", (done, text)
    assert "more than the 1.0 MiB a job may commit" in done["message"]
    r = http.get(f"{API}/repos/alice/small/commits", headers=alice.headers)
    assert r.status_code == 200 and r.json()["items"] == [], r.text  # an empty dataset: no commit at all


def test_odd_commands_and_requirements(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "tool", SH)
    done, text = run(http, alice, ["echo", "@report-fd@", "@info-fd@"])  # words of the shim's own, verbatim
    assert done["status"] == "succeeded" and "@report-fd@ @info-fd@" in text, (done, text)
    done, text = run(http, alice, ["sh", "-c", "echo hi; kill -9 $$"])
    assert done["status"] == "failed" and done["exit_code"] == 137, (done, text)
    assert "Traceback" not in text
    spec = {"code": {"repo": "alice/tool"}, "command": ["true"], "env": {"requirements": ["evil-wheel.whl"]}}
    r = http.post(f"{API}/jobs", json=spec, headers=alice.headers)
    assert (
        r.status_code == 422 and r.json()["error"] == "invalid_spec" and "names a file" in r.json()["message"]
    )


def test_the_input_cache_keeps_what_jobs_use_and_drops_the_oldest_past_its_limit(tmp_path: Path) -> None:
    from opensci.compute import workspace
    from opensci.settings import Settings

    settings = Settings(home=tmp_path, compute_input_cache_bytes=3 * 4096)
    cache = workspace.objects_dir(settings)
    cache.mkdir(parents=True)
    for i, name in enumerate(("old", "used", "recent", "newest")):
        (cache / name).write_bytes(b"x" * 4096)
        os.utime(cache / name, (1000 + i, 1000 + i))
    linked = workspace.job_dir(settings, 7) / "work" / "inputs" / "d" / "f"
    linked.parent.mkdir(parents=True)
    os.link(cache / "used", linked)  # linked into a job's directory: in use
    assert workspace.trim_cache(settings) == 4096
    assert sorted(p.name for p in cache.iterdir()) == ["newest", "recent", "used"]
    # When the job ends, what it used may go too (QA: the cache stayed over its budget until the next
    # job's inputs came in).
    settings.compute_input_cache_bytes = 2 * 4096
    workspace.clean(settings, 7)
    assert sorted(p.name for p in cache.iterdir()) == ["newest", "recent"]


def test_an_input_made_private_while_the_job_runs_is_not_published(
    http: httpx.Client, alice: Account, bob: Account
) -> None:
    code_repo(http, alice, "tool", SH)
    dataset(http, bob, "shared", {"p.txt": "bob's\n"})
    dataset(http, alice, "public-out", None)
    job = submit(
        http,
        alice,
        {
            "code": {"repo": "alice/tool"},
            "command": ["sh", "-c", "sleep 2; cp inputs/x/p.txt outputs/"],
            "inputs": {"x": {"repo": "bob/shared"}},
            "output": {"repo": "alice/public-out"},
        },
    )
    wait(http, alice, job["id"], lambda j: j["status"] == "running")
    r = http.patch(f"{API}/repos/bob/shared", json={"private": True}, headers=bob.headers)
    assert r.status_code == 200, r.text
    done = finished(http, bob, job["id"])  # alice no longer sees it: one of its inputs is private to her
    assert done["status"] == "failed" and done["reason"] == "permissions", done
    assert "may no longer read bob/shared" in done["message"]
    r = http.get(f"{API}/repos/alice/public-out/commits", headers=alice.headers)
    assert r.json()["items"] == [], r.text
