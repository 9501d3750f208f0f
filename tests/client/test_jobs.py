"""Jobs through the SDK, against a live server whose scheduler runs them with the local executor:
submit (spec or keywords), list, get, logs, follow (server-sent events), wait, cancel, rerun, and the
errors each can raise. What the SDK returns is checked against the REST API read directly."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from opensci.client import (
    Client,
    ConflictError,
    ForbiddenError,
    Job,
    JobNotFoundError,
    NotFoundError,
    UnauthorizedError,
    ValidationError,
    WaitTimeout,
)
from opensci.client.sse import Event, SSEParser
from opensci.client.types import JobLog
from tests.api_helpers import API, committed
from tests.compute.conftest import (  # noqa: F401 (fixtures)
    code_repo,
    compute_app,
    dataset,
    http,
    server,
)
from tests.conftest import Account, LiveServer, free_port

COUNT = """\
import os, sys, time
n = int(sys.argv[1])
for i in range(n):
    print(f"line {i:04d} " + "x" * (i % 50), flush=True)
    if i % 40 == 0:
        time.sleep(0.05)
print("two\\nlines, and é ünïcode", flush=True)
print("to stderr", file=sys.stderr, flush=True)
sys.exit(int(os.environ.get("EXIT", "0")))
"""

SUM = """\
import pathlib
rows = pathlib.Path("inputs/numbers/values.csv").read_text().split()
pathlib.Path("outputs/total.txt").write_text(f"{sum(int(x) for x in rows[1:])}\\n")
print("done", flush=True)
"""


@pytest.fixture
def sdk(server: LiveServer, alice: Account) -> Iterator[Client]:  # noqa: F811 (the compute server)
    with Client(server.url, alice.token) as c:
        yield c


def raw_job(http: httpx.Client, who: Account, job_id: int) -> dict[str, Any]:  # noqa: F811
    r = http.get(f"{API}/jobs/{job_id}", headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_follow_gets_every_line_in_order_then_the_end_status(
    sdk: Client,
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    code = code_repo(http, alice, "counter", {"count.py": COUNT})
    job = sdk.submit_job(code="alice/counter", command="python count.py 400")
    assert isinstance(job, Job) and job.status == "queued" and job.id > 0
    assert job.code.repo == "alice/counter" and job.code.commit == code
    assert job.command == ["python", "count.py", "400"]

    stream = sdk.follow_job_logs(job.id)
    text = "".join(stream)
    assert stream.end is not None
    assert (stream.end.status, stream.end.exit_code) == ("succeeded", 0) and stream.end.succeeded
    ours = [line for line in text.splitlines() if line.startswith("line ")]
    assert ours == [f"line {i:04d} " + "x" * (i % 50) for i in range(400)]
    assert "two\nlines, and é ünïcode\n" in text and "to stderr" in text

    # The whole log read plainly is what was streamed, byte for byte; offsets line up.
    log = sdk.job_logs(job.id)
    assert log.text == text and log.offset == 0 and log.next_offset == len(text.encode())
    assert log.status == "succeeded" and stream.offset == log.next_offset
    assert sdk.job_logs(job.id, offset=log.next_offset).data == b""
    tail = sdk.job_logs(job.id, offset=10)
    assert tail.data == text.encode()[10:]
    # Following a finished job from an offset replays from there and ends at once.
    again = sdk.follow_job_logs(job.id, offset=len(text.encode()) - 30)
    assert "".join(again).encode() == text.encode()[-30:]
    assert again.end is not None and again.end.status == "succeeded"

    done = sdk.get_job(job.id)
    assert done.status == "succeeded" and done.phase == "done" and done.finished and done.succeeded
    assert done.exit_code == 0 and done.started_at and done.ended_at
    assert done.usage.wall_seconds is not None and done.environment.python
    assert done.raw == raw_job(http, alice, job.id)


def test_submit_with_a_spec_dict_and_short_forms_records_provenance(
    sdk: Client,
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    code = code_repo(http, alice, "adder", {"sum.py": SUM})
    data = dataset(http, alice, "numbers", {"values.csv": "v\n1\n2\n39\n"})
    dataset(http, alice, "results", None)
    spec = {
        "code": {"repo": "alice/adder", "rev": "main"},
        "command": ["python", "sum.py"],
        "resources": {"cpus": 1, "memory": "1G"},
    }
    job = sdk.submit_job(
        spec, inputs={"numbers": "alice/numbers@main"}, output="alice/results@runs", time_limit="10m"
    )
    assert job.resources.time_limit == 600 and job.resources.memory == 1024**3 and job.resources.cpus == 1
    assert job.inputs["numbers"].commit == data and job.inputs["numbers"].rev == "main"
    assert job.output is not None and (job.output.repo, job.output.branch) == ("alice/results", "runs")
    assert job.spec["resources"]["time_limit"] == 600

    done = sdk.wait_job(job.id, timeout=120, poll=0.2)
    assert done.succeeded, sdk.job_logs(job.id).text
    assert done.output is not None and done.output.commit
    raw = http.get(f"/datasets/alice/results/resolve/{done.output.commit}/total.txt")
    assert raw.text == "42\n"
    assert done.code.commit == code
    # Fields this SDK does not model stay readable.
    assert done["output"]["commit"] == done.output.commit and done.get("no_such_field", 7) == 7
    future = Job.from_json({**done.raw, "carbon_grams": 1.5})
    assert future["carbon_grams"] == 1.5 and future.id == done.id


def test_list_jobs_filters_and_pages(
    sdk: Client,
    bob: Account,
    http: httpx.Client,  # noqa: F811
    alice: Account,
    server: LiveServer,  # noqa: F811
) -> None:
    code_repo(http, alice, "counter", {"count.py": COUNT})
    ok = [sdk.submit_job(code="alice/counter", command=["python", "count.py", "1"]) for _ in range(3)]
    bad = sdk.submit_job(code="alice/counter", command="python count.py 1", variables={"EXIT": "3"})
    for j in [*ok, bad]:
        sdk.wait_job(j.id, timeout=120, poll=0.2)
    code_repo(http, bob, "other", {"count.py": COUNT})
    with Client(server.url, bob.token) as bob_sdk:
        theirs = bob_sdk.submit_job(code="bob/other", command="python count.py 1")
        bob_sdk.wait_job(theirs.id, timeout=120, poll=0.2)

    everyone = [j.id for j in sdk.list_jobs()]
    assert everyone == sorted([j.id for j in [*ok, bad, theirs]], reverse=True)
    assert [j.id for j in sdk.list_jobs(per_page=2)] == everyone  # pages follow each other
    assert [j.id for j in sdk.list_jobs(limit=3, per_page=2)] == everyone[:3]
    assert [j.id for j in sdk.list_jobs(owner="bob")] == [theirs.id]
    assert [j.id for j in sdk.list_jobs(status="failed")] == [bad.id]
    assert [j.id for j in sdk.list_jobs(repo="bob/other")] == [theirs.id]
    failed = sdk.get_job(bad.id)
    assert (failed.status, failed.exit_code, failed.reason) == ("failed", 3, "exit_code")
    with pytest.raises(ValidationError) as err:
        list(sdk.list_jobs(status="finished"))
    assert err.value.code == "invalid_status" and "succeeded" in err.value.hint


def test_cancel_a_running_job_then_rerun_it_at_the_same_commit(
    sdk: Client,
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    first = code_repo(
        http, alice, "sleeper", {"run.py": "import time\nprint('started', flush=True)\ntime.sleep(60)\n"}
    )
    job = sdk.submit_job(code="alice/sleeper", command="python run.py")
    deadline = time.monotonic() + 60
    while "started" not in sdk.job_logs(job.id).text:
        assert time.monotonic() < deadline, sdk.get_job(job.id)
        time.sleep(0.1)
    with pytest.raises(WaitTimeout) as waited:
        sdk.wait_job(job.id, timeout=0.5, poll=0.1)
    assert isinstance(waited.value, TimeoutError) and "still running" in waited.value.message
    assert "opensci job cancel" in waited.value.hint

    asked = sdk.cancel_job(job.id)
    assert asked.id == job.id and (asked.cancel_requested or asked.status == "cancelled")
    started = time.monotonic()
    stream = sdk.follow_job_logs(job.id)
    assert "started" in "".join(stream)
    assert stream.end is not None and stream.end.status == "cancelled" and not stream.end.succeeded
    assert time.monotonic() - started < 30
    with pytest.raises(ConflictError) as err:
        sdk.cancel_job(job.id)
    assert err.value.code == "job_finished" and "rerun" in err.value.hint

    committed(http, alice, "alice/sleeper", {"run.py": "print('new code')\n"})
    again = sdk.rerun_job(job.id)
    assert again.rerun_of == job.id and again.id != job.id and again.status == "queued"
    assert again.code.commit == first and again.command == ["python", "run.py"]
    sdk.cancel_job(again.id)  # queued (cancelled at once) or just claimed (stopped in seconds)
    ended = sdk.wait_job(again.id, timeout=60, poll=0.2)
    assert ended.status == "cancelled", (ended, sdk.job_logs(again.id).text)


def test_errors_are_typed_with_hints_and_queue_nothing(
    sdk: Client,
    bob: Account,
    http: httpx.Client,  # noqa: F811
    alice: Account,
    server: LiveServer,  # noqa: F811
) -> None:
    code_repo(http, alice, "counter", {"count.py": COUNT})
    with pytest.raises(ValidationError) as bad_field:
        sdk.submit_job(code="alice/counter", command="python count.py 1", resources={"cpu": 2})
    assert bad_field.value.status == 422 and "cpu" in bad_field.value.message
    with pytest.raises(ValidationError) as bad_spec:
        sdk.submit_job(code="alice/counter", command="python count.py 1", requirements=["-e ."])
    assert bad_spec.value.code == "invalid_spec" and "job submit --help" in bad_spec.value.hint
    with pytest.raises(ValidationError) as local:
        sdk.submit_job(code="alice/counter", command="x", time_limit="soon")
    assert local.value.code == "invalid_spec" and local.value.status == 0  # refused before sending
    with pytest.raises(ValidationError) as huge:  # an infinite float (QA: OverflowError)
        sdk.submit_job(code="alice/counter", command="x", time_limit="9" * 400 + "h")
    assert huge.value.code == "invalid_spec" and huge.value.status == 0
    with pytest.raises(NotFoundError) as missing:
        sdk.submit_job(code="alice/nothing", command="x")
    assert missing.value.code == "repo_not_found"
    with pytest.raises(ForbiddenError) as priority:
        sdk.submit_job(code="alice/counter", command="x", priority=10)
    assert priority.value.code == "priority_not_allowed" and "administrators" in priority.value.hint
    with Client(server.url, alice.read_token) as reader, pytest.raises(ForbiddenError) as scope:
        reader.submit_job(code="alice/counter", command="x")
    assert scope.value.code == "insufficient_scope"
    with Client(server.url, "") as anonymous, pytest.raises(UnauthorizedError) as anon:
        anonymous.submit_job(code="alice/counter", command="x")
    assert anon.value.code == "login_required" and "opensci login" in anon.value.hint
    assert list(sdk.list_jobs()) == []  # nothing was queued

    with pytest.raises(JobNotFoundError) as gone:
        sdk.get_job(999_999)
    assert isinstance(gone.value, NotFoundError) and gone.value.code == "job_not_found"
    assert "opensci job list" in gone.value.hint
    with pytest.raises(ValidationError) as not_an_id:
        sdk.get_job("abc")  # type: ignore[arg-type]
    assert not_an_id.value.code == "invalid_job_id"

    # A job over a private repository is not found for others; another's job cannot be cancelled.
    code_repo(http, alice, "secret", {"count.py": COUNT}, private=True)
    hidden = sdk.submit_job(code="alice/secret", command="python count.py 1")
    shown = sdk.submit_job(code="alice/counter", command="python count.py 1")
    with Client(server.url, bob.token) as bob_sdk:
        with pytest.raises(JobNotFoundError):
            bob_sdk.get_job(hidden.id)
        with pytest.raises(JobNotFoundError):
            list(bob_sdk.follow_job_logs(hidden.id))
        assert bob_sdk.get_job(shown.id).id == shown.id
        assert [j.id for j in bob_sdk.list_jobs()] == [shown.id]
        with pytest.raises(ForbiddenError) as not_theirs:
            bob_sdk.cancel_job(shown.id)
        assert not_theirs.value.code == "forbidden"


class CuttableProxy:
    """A TCP relay in front of the live server whose open connections can be cut at once, as a broken
    network would: the client sees its stream end mid-body."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        with self.lock:
            cut, self.sockets = self.sockets, []
        for s in cut:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        return len(cut) // 2

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_following_survives_a_broken_connection_without_losing_or_repeating_a_line(
    server: LiveServer,  # noqa: F811
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    slow = "import time\nfor i in range(40):\n    print(f'tick {i:02d}', flush=True)\n    time.sleep(0.1)\n"
    code_repo(http, alice, "ticker", {"tick.py": slow})
    proxy = CuttableProxy(int(server.url.rsplit(":", 1)[1]))
    try:
        with Client(proxy.url, alice.token) as c:
            job = c.submit_job(code="alice/ticker", command="python tick.py")
            stream = c.follow_job_logs(job.id)
            text, cuts = "", 0
            for piece in stream:
                text += piece
                if cuts < 2 and f"tick {5 + 15 * cuts:02d}" in text:
                    cuts += proxy.cut() > 0
            assert cuts == 2
    finally:
        proxy.close()
    assert stream.end is not None and stream.end.status == "succeeded"
    ticks = [line for line in text.splitlines() if line.startswith("tick ")]
    assert ticks == [f"tick {i:02d}" for i in range(40)]
    assert text == http.get(f"{API}/jobs/{job.id}/logs", headers=alice.headers).text


def _parse_all(pieces: list[str]) -> list[Event]:
    parser = SSEParser()
    return [event for piece in pieces for event in parser.feed(piece)]


def test_sse_parser_follows_the_standard_whatever_the_pieces() -> None:
    stream = (
        ": keep-alive\n\n"
        "event: log\ndata: first\ndata:second\ndata:  third\n\n"
        'id: 7\r\nevent: end\r\ndata: {"status": "ok"}\r\n\r\n'
        "data: no type\rdata\r\r"
        "event: lonely\n\n"  # no data: not dispatched
        "retry: 10\nunknown: x\ndata: last\n\n"
        "data: incomplete"
    )
    expected = [
        Event("log", "first\nsecond\n third"),
        Event("end", '{"status": "ok"}', "7"),
        Event("message", "no type\n", "7"),
        Event("message", "last", "7"),
    ]
    assert _parse_all([stream]) == expected
    assert _parse_all(list(stream)) == expected  # one character at a time
    for cut in range(1, len(stream)):
        assert _parse_all([stream[:cut], stream[cut:]]) == expected, cut


def test_sse_parser_takes_a_big_event_in_small_pieces_in_linear_time() -> None:
    data = '{"offset": 1, "text": "' + "é€ \\n " * 400_000 + '"}'  # 2.4 M characters on one line
    stream = f"event: log\ndata: {data}\n\n" * 2
    pieces = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    started = time.monotonic()
    events = _parse_all(pieces)
    took = time.monotonic() - started
    assert events == [Event("log", data), Event("log", data)]
    assert took < 2, took  # rescanning what is buffered at every piece took minutes


class PagedLogClient:
    """Just what LogStream uses of a Client: a log read a few bytes at a time, a job that ends once
    `ends_after` reads have been made, and the live stream (which fails: it must not be needed)."""

    timeout = 30.0
    url = "http://fake"

    def __init__(self, log: bytes, page: int, ends_after: int = 0) -> None:
        self.log, self.page, self.ends_after = log, page, ends_after
        self.reads: list[int] = []
        self.streams: list[int] = []

    def job_logs(self, job_id: int, offset: int = 0) -> JobLog:
        self.reads.append(offset)
        status = "succeeded" if len(self.reads) > self.ends_after else "running"
        written = self.log if status == "succeeded" else self.log[: len(self.log) // 2]
        data = written[offset : offset + self.page]
        return JobLog(data, offset, offset + len(data), status)

    def get_job(self, job_id: int) -> Any:
        return SimpleNamespace(id=job_id, status="succeeded", exit_code=0, message="done")

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Any]:
        self.streams.append(kwargs["params"]["offset"])
        raise AssertionError("a finished job's log is read without following it live")
        yield


def test_a_finished_log_is_read_plainly_with_characters_cut_across_pages() -> None:
    from opensci.client.jobs import LogStream, incomplete_utf8_tail

    log = ("[opensci] note\n" + "".join(f"{i} é€😀\n" for i in range(300))).encode()
    for page in (1, 2, 3, 5, 64, 4096):
        fake = PagedLogClient(log, page)
        stream = LogStream(fake, 7)  # type: ignore[arg-type]
        assert "".join(stream) == log.decode(), page
        assert stream.end is not None and (stream.end.status, stream.end.message) == ("succeeded", "done")
        assert stream.offset == len(log) and fake.streams == []
        assert b"".join(LogStream(PagedLogClient(log, page), 7).iter_bytes()) == log  # type: ignore[arg-type]
    # While the job runs, a read never stops inside a character: live following starts on a boundary.
    running = PagedLogClient(log, 5, ends_after=10**9)
    stream = LogStream(running, 7)  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        "".join(stream)
    assert running.streams == [stream.offset] and stream.offset > 0
    assert incomplete_utf8_tail(log[: stream.offset]) == 0
    assert [
        incomplete_utf8_tail(b) for b in (b"", b"a", b"\xc3", b"\xc3\xa9", b"\xe2\x82", b"\xf0\x9f\x98")
    ] == [
        0,
        0,
        1,
        0,
        2,
        3,
    ]


def test_bytes_of_a_running_job_are_read_plainly_until_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from opensci.client.jobs import LogStream

    monkeypatch.setattr(LogStream, "POLL", 0.01, raising=False)
    # Not UTF-8: events would carry it as text with U+FFFD in place of these bytes.
    log = b"[opensci] note\n" + bytes(range(256)) * 20 + b"a\xff\xfeb\n\xe2\x82"
    for page in (1, 7, 4096):
        fake = PagedLogClient(log, page, ends_after=len(log) // 2 // page + 5)
        stream = LogStream(fake, 7)  # type: ignore[arg-type]
        assert b"".join(stream.iter_bytes()) == log, page
        assert fake.streams == []  # never followed with events
        assert stream.end is not None and stream.end.status == "succeeded" and stream.offset == len(log)
        # read on from where it was, with reads that found nothing new while the job ran
        assert fake.reads == sorted(fake.reads) and fake.reads.count(len(log) // 2) > 1


def test_following_a_finished_job_reads_its_log_plainly(
    sdk: Client,
    http: httpx.Client,  # noqa: F811
    alice: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loud = "for i in range(200_000):\n    print(f'{i:06d} é€😀 ' + 'x' * (i % 90))\n"
    code_repo(http, alice, "loud", {"loud.py": loud})
    job = sdk.submit_job(code="alice/loud", command="python loud.py")
    assert sdk.wait_job(job.id, timeout=120, poll=0.2).succeeded
    whole = b""
    while piece := sdk.job_logs(job.id, len(whole)).data:
        whole += piece
    assert len(whole) > 10 * 1024**2

    def no_events(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("followed live although the job had ended")

    monkeypatch.setattr(sdk, "stream", no_events)
    started = time.monotonic()
    stream = sdk.follow_job_logs(job.id)
    text = "".join(stream)
    assert time.monotonic() - started < 5
    assert text == whole.decode() and stream.offset == len(whole)
    assert stream.end is not None and stream.end.status == "succeeded" and stream.end.exit_code == 0
    again = sdk.follow_job_logs(job.id, offset=len(whole) - 1000)
    assert b"".join(again.iter_bytes()) == whole[-1000:] and again.end is not None
