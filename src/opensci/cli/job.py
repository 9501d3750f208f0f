"""`opensci job submit|list|status|logs|cancel|rerun`: jobs, through the SDK.

Following a job (`--follow`, `logs -f`) prints its log to stdout as it is written and ends when the job
does: exit code 0 if it succeeded, 1 otherwise. On a terminal a status line shows where it stands, and
control characters of the log are shown rather than obeyed.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from opensci.cli import job_spec, job_view, output
from opensci.cli.commands import connect
from opensci.cli.output import JsonOpt, handle_errors, note, print_json

if TYPE_CHECKING:
    from opensci.client import Client, Job

job_app = typer.Typer(
    help="Jobs: run code on datasets, with provenance. Submit, list, show, follow logs, cancel, rerun.",
    no_args_is_help=True,
)


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timeout = "timeout"


JobIdArg = Annotated[int, typer.Argument(metavar="ID", help="The job's id.", min=1)]
FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow", "-f", help="Print the log as it is written until the job ends; exit 1 unless it succeeds."
    ),
]
FollowLongOpt = Annotated[
    bool,
    typer.Option(
        "--follow", help="Print the log as it is written until the job ends; exit 1 unless it succeeds."
    ),
]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Wait until the job ends (no log); exit 1 unless it succeeds.")
]


def _finish(job: Job, json_output: bool) -> None:
    """Report how a followed or waited-for job ended; exit 0 if it succeeded, else 1."""
    if json_output:
        print_json(job.raw)
    else:
        note(job_view.summary(job))
        if not job.succeeded:
            note(f"its log: `opensci job logs {job.id}`; its details: `opensci job status {job.id}`")
    raise typer.Exit(0 if job.succeeded else 1)


def follow(client: Client, job: Job, json_output: bool) -> None:
    """Stream the job's log until it ends (to stderr with --json, so stdout holds only the JSON)."""
    try:
        with job_view.LiveStatus(job, enabled=not json_output, logs_to_stderr=json_output) as live:
            live.watch(client)
            # What the log holds is read plainly first (fast however long), then followed live: into a
            # file or a pipe by reading on plainly, byte for byte; on a terminal, where it is shown
            # decoded anyway, as the server's events (text) come.
            stream = client.follow_job_logs(job.id)
            pieces = (t.encode() for t in stream) if live.logs_to_terminal else stream.iter_bytes()
            for data in pieces:
                live.write(data)
    except KeyboardInterrupt:
        note(f"Stopped following job {job.id}; it goes on (`opensci job cancel {job.id}` stops it).")
        raise typer.Exit(130) from None
    _finish(client.get_job(job.id), json_output)


def wait(client: Client, job: Job, json_output: bool) -> None:
    try:
        with job_view.LiveStatus(job, enabled=not json_output) as live:
            done = client.wait_job(job.id, progress=live.update)
    except KeyboardInterrupt:
        note(f"Stopped waiting for job {job.id}; it goes on (`opensci job cancel {job.id}` stops it).")
        raise typer.Exit(130) from None
    _finish(done, json_output)


def _submitted(client: Client, job: Job, *, follow_it: bool, wait_it: bool, json_output: bool) -> None:
    of = f", a rerun of job {job.rerun_of}" if job.rerun_of is not None else ""
    if follow_it or wait_it:
        note(job_view.visible(f"Submitted job {job.id}{of}: {job.url}"))
        (follow if follow_it else wait)(client, job, json_output)
        return
    if json_output:
        print_json(job.raw)
        return
    note(
        job_view.visible(
            f"Submitted job {job.id}{of}, {job.status}. Follow it with `opensci job logs {job.id} -f`."
        )
    )
    typer.echo(job.id)
    typer.echo(job_view.visible(job.url))


@job_app.command("submit")
@handle_errors
def submit(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- COMMAND",
            help="The command, after `--` (one quoted word with spaces is split like a shell line).",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="A job file (YAML) with the keys of the API spec; flags override its fields."
        ),
    ] = None,
    code: Annotated[
        str | None, typer.Option("--code", metavar="OWNER/NAME[@REV]", help="The code repository to run.")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            metavar="NAME=OWNER/NAME[@REV]",
            help="A dataset (or model) mounted read-only at inputs/NAME/. Repeatable.",
        ),
    ] = None,
    output_repo: Annotated[
        str | None,
        typer.Option(
            "--output",
            metavar="OWNER/NAME[@BRANCH]",
            help="Dataset (or model) that gets what the job writes under outputs/, as one commit.",
        ),
    ] = None,
    requirements: Annotated[
        list[str] | None,
        typer.Option(
            "--requirement", "-r", metavar="REQ", help="A pip requirement (wheels only). Repeatable."
        ),
    ] = None,
    requirements_file: Annotated[
        Path | None,
        typer.Option("--requirements-file", metavar="FILE", help="Requirements, one a line (# comments)."),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="KEY=VALUE", help="An environment variable. Repeatable."),
    ] = None,
    network: Annotated[
        bool | None,
        typer.Option(
            "--network/--no-network", help="Whether the command may use the network.", show_default=False
        ),
    ] = None,
    cpus: Annotated[int | None, typer.Option("--cpus", min=1, help="CPUs (default 1).")] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", metavar="SIZE", help="Memory limit: bytes or e.g. 512M, 4G.")
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time-limit", metavar="DURATION", help="Time limit: seconds or e.g. 30m, 1h, 1h30m, 2d."
        ),
    ] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", min=0, help="GPUs (slurm executor).")] = None,
    executor: Annotated[
        str | None, typer.Option("--executor", help="Where it runs: local or slurm (default: the server's).")
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option("--priority", min=-100, max=100, help="Higher runs first; above 0 for administrators."),
    ] = None,
    follow_it: FollowLongOpt = False,
    wait_it: WaitOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Run a command on code at a revision, with datasets as inputs; outputs become a commit.

    The command comes after `--`. It runs in a checkout of the code, each input read-only at inputs/NAME/.

    What it writes under outputs/ becomes one commit on --output, pointing back at the job.

    \b
    opensci job submit --code alice/fit@v1 --input stars=alice/stars \\
        --output alice/results@runs -r numpy==2.1.0 --cpus 2 --memory 4G \\
        --time-limit 1h --follow -- python fit.py --bins 20

    A job file (-f job.yaml) holds the API's keys: code, command, inputs, output, env, resources, executor.

    Flags override the job file's fields (--input and --env entry by entry)."""
    data = job_spec.load_file(file) if file is not None else {}
    flags = job_spec.Flags(
        code=code,
        command=list(command or []),
        inputs=list(inputs or []),
        output=output_repo,
        requirements=list(requirements or []),
        requirements_file=requirements_file,
        env=list(env or []),
        network=network,
        cpus=cpus,
        memory=memory,
        time_limit=time_limit,
        gpus=gpus,
        executor=executor,
        priority=priority,
    )
    spec = job_spec.build(data, flags)
    with connect() as client:
        job = client.submit_job(spec)
        _submitted(client, job, follow_it=follow_it, wait_it=wait_it, json_output=json_output)


@job_app.command("list")
@handle_errors
def list_(
    owner: Annotated[str | None, typer.Option("--owner", help="Only jobs this user submitted.")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only the jobs you submitted.")] = False,
    status: Annotated[Status | None, typer.Option("--status", help="Only jobs in this state.")] = None,
    repo: Annotated[
        str | None, typer.Option("--repo", metavar="OWNER/NAME", help="Only jobs that read or write it.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 20,
    json_output: JsonOpt = False,
) -> None:
    """List the jobs you may see, newest first."""
    if owner and mine:
        raise typer.BadParameter("give either --owner or --mine, not both")
    with connect() as client:
        if mine:
            owner = client.whoami().name
        found = client.list_jobs(
            owner=owner,
            status=status.value if status else None,
            repo=repo,
            limit=limit,
            per_page=min(limit, 100),
        )
        jobs = list(itertools.islice(found, limit))
    if json_output:
        print_json([j.raw for j in jobs])
        return
    if not jobs:
        note("No jobs found.")
        return
    job_view.table(jobs)


@job_app.command("status")
@handle_errors
def status_(job_id: JobIdArg, json_output: JsonOpt = False) -> None:
    """Show a job and its provenance: commits, environment, resources, usage, output commit."""
    with connect() as client:
        job = client.get_job(job_id)
    if json_output:
        print_json(job.raw)
        return
    job_view.provenance(job)


@job_app.command("logs")
@handle_errors
def logs(job_id: JobIdArg, follow_it: FollowOpt = False) -> None:
    """Print a job's log: what its command printed, and the platform's own lines.

    With -f, go on as the log is written until the job ends; exit code 0 if it succeeded, else 1.

    To a file or a pipe the log is written byte for byte; on a terminal, control characters in it
    (escape sequences) are shown as `^[`… rather than obeyed."""
    with connect() as client:
        if follow_it:
            follow(client, client.get_job(job_id), json_output=False)
            return
        out = job_view.LogOutput()
        offset = 0
        while True:
            piece = client.job_logs(job_id, offset)
            if not piece.data:
                break
            out.write(piece.data)
            offset = piece.next_offset
        out.close()


@job_app.command("cancel")
@handle_errors
def cancel(job_id: JobIdArg, json_output: JsonOpt = False) -> None:
    """Cancel a job: a queued one at once, a running one (its whole process tree) within seconds."""
    from opensci.client import ForbiddenError

    with connect() as client:
        try:
            job = client.cancel_job(job_id)
        except ForbiddenError as exc:
            if exc.code != "forbidden":
                raise
            raise output.fail(
                exc.message,
                "only the job's submitter or a site administrator may cancel it",
                code=exc.code,
                as_json=json_output,
            ) from None
    if json_output:
        print_json(job.raw)
        return
    if job.finished:
        typer.echo(f"Cancelled job {job.id}.")
    else:
        status = job_view.visible(job.status)
        typer.echo(f"Stopping job {job.id} ({status}); `opensci job status {job.id}` shows when it has.")


@job_app.command("rerun")
@handle_errors
def rerun(
    job_id: JobIdArg, follow_it: FollowOpt = False, wait_it: WaitOpt = False, json_output: JsonOpt = False
) -> None:
    """Run a job again at the same commits of its code and inputs; prints the new job's id.

    The command, environment, resources and output branch are the recorded ones."""
    with connect() as client:
        job = client.rerun_job(job_id)
        _submitted(client, job, follow_it=follow_it, wait_it=wait_it, json_output=json_output)
