"""Pages of the compute domain: the list of jobs, a job's page (status, provenance, live logs, cancel and
rerun) and the "Run" form of a code repository.

Visibility is the compute service's: `list_jobs` lists only jobs the viewer may read and `get_job` says
"not found" for the others, so a private job is a 404 page like a private repository.

A job's page works without JavaScript: it shows the log as it was when the page was made. With it,
`static/jobs.js` follows the log through the API's server-sent events (`/api/v1/jobs/{id}/logs?follow=
true`, from the byte the page stopped at) and, when the `end` event comes, fires `job-ended`, on which
htmx reloads the live part of the page (`?part=live`: status, usage, outputs, provenance); while the job
runs, htmx also reloads it every few seconds.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response
from markupsafe import Markup
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.orm import Session

from opensci.accounts.permissions import Actor
from opensci.compute import service, workspace
from opensci.compute.models import Job, JobStatus
from opensci.compute.provenance import provenance_svg, repo_url
from opensci.compute.schemas import JobSpec, spec_error_message
from opensci.deps import MAX_ROW_ID, ActorDep, SessionDep, SettingsDep, StoreDep, is_row_id
from opensci.errors import InvalidInput, NotFound, OpenSciError
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind, Repository
from opensci.settings import Settings
from opensci.web.render import render, timeago
from opensci.web.session import check_csrf
from opensci.web.views.accounts import login_redirect, see_other
from opensci.web.views.repos import repo_page

router = APIRouter(include_in_schema=False)

FormStr = Annotated[str, Form()]
STATUSES = tuple(s.value for s in JobStatus)
PER_PAGE = 50
LOG_PAGE_BYTES = 256 * 1024  # the end of a longer log is shown; the API has the whole of it


def ago(value: str | None) -> str:
    """ "3 minutes ago" from an ISO time of the job's JSON (None: "—")."""
    return timeago(datetime.fromisoformat(value)) if value else "—"


def duration(seconds: float | None) -> str:
    """A length of time as people read it: 0.4 s, 12 s, 3 min 5 s, 2 h 10 min."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s" if whole % 60 else f"{whole // 60} min"
    hours, minutes = whole // 3600, whole % 3600 // 60
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def command_line(words: list[str]) -> str:
    """A job's command as a shell line (`sh -c 'for i in 1 2; do echo $i; done'`), as the CLI shows it:
    words with spaces or shell characters are quoted, so what is shown can be run as is."""
    return shlex.join(words)


# Helpers the job templates use.
FORMAT = {"ago": ago, "duration": duration, "repo_url": repo_url, "command_line": command_line}


def _wake(request: Request) -> None:
    """Tell this process's scheduler (if it runs one) to look at the queue now."""
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake.set()


def _is_htmx(request: Request) -> bool:
    return bool(request.headers.get("hx-request")) and not request.headers.get("hx-history-restore-request")


def _find_job(actor: Actor, session: Session, job_id: int) -> Job:
    if not is_row_id(job_id):
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return service.get_job(actor, session, job_id)


# --- the list ---------------------------------------------------------------------------------------------


@router.get("/jobs")
def jobs_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    actor: ActorDep,
    status: str = "",
    owner: Annotated[str, Query(max_length=200)] = "",
    repo: Annotated[str, Query(max_length=300)] = "",
    before: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
) -> Response:
    status = status if status in STATUSES else ""
    owner = owner.strip()
    target = None
    if repo.strip():
        repo_owner, _, repo_name = repo.strip().partition("/")
        target = repos.get_repo(actor, session, repo_owner, repo_name)
    jobs = service.list_jobs(
        actor, session, owner=owner or None, status=status or None, repo=target, limit=PER_PAGE, before=before
    )
    counts = service.count_by_status(actor, session)
    return render(
        request,
        "jobs/list.html",
        **FORMAT,
        jobs=[service.job_dict(settings, session, j) for j in jobs],
        counts={s: counts.get(s, 0) for s in STATUSES},
        total=sum(counts.values()),
        status_filter=status,
        owner=owner,
        repo=target.full_name if target else "",
        next_before=jobs[-1].id if len(jobs) == PER_PAGE else None,
    )


# --- one job ----------------------------------------------------------------------------------------------


def _log_tail(settings: Settings, job: Job) -> tuple[str, int, bool]:
    """The end of the job's log as text, the byte offset the page stops at (where following resumes),
    and whether the beginning was left out. While the job runs, only whole lines are shown."""
    path = workspace.job_dir(settings, job.id) / "log"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - LOG_PAGE_BYTES)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return "", 0, False
    if not job.final:
        data = data[: data.rfind(b"\n") + 1]  # the rest, maybe half a character, comes live
    end = start + len(data)
    if start > 0:
        data = data[data.find(b"\n") + 1 :]
    return data.decode("utf-8", errors="replace"), end, start > 0


def _live_context(
    request: Request, settings: Settings, session: Session, actor: Actor, job: Job
) -> dict[str, Any]:
    data = service.job_dict(settings, session, job)
    may_cancel = actor.is_admin or (actor.user is not None and actor.user.id == job.submitter_id)
    return {
        "job": data,
        "final": job.final,
        "provenance": Markup(provenance_svg(data)),
        "can_cancel": may_cancel and not job.final and job.phase != "collecting",
        **FORMAT,
    }


def _job_page(
    request: Request,
    settings: Settings,
    session: Session,
    actor: Actor,
    job: Job,
    status: int = 200,
    error: str = "",
) -> Response:
    context = _live_context(request, settings, session, actor, job)
    log_text, log_offset, log_cut = _log_tail(settings, job)
    return render(
        request,
        "jobs/job.html",
        status=status,
        error=error,
        log_text=log_text,
        log_offset=log_offset,
        log_cut=log_cut,
        can_rerun=service.may_rerun(actor, job),
        headers={"Vary": "HX-Request"},
        **context,
    )


@router.get("/jobs/{job_id}")
def job_page(
    job_id: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    actor: ActorDep,
    part: str = "",
) -> Response:
    job = _find_job(actor, session, job_id)
    if part == "live" and _is_htmx(request):
        context = _live_context(request, settings, session, actor, job)
        return render(request, "jobs/_live.html", headers={"Vary": "HX-Request"}, **context)
    return _job_page(request, settings, session, actor, job)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    job_id: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    actor: ActorDep,
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    job = _find_job(actor, session, job_id)
    try:
        service.cancel(actor, session, job)
    except OpenSciError as exc:
        session.rollback()
        session.refresh(job)
        return _job_page(request, settings, session, actor, job, status=exc.status, error=exc.message)
    _wake(request)
    return see_other(f"/jobs/{job.id}")


@router.post("/jobs/{job_id}/rerun")
def rerun_job(
    job_id: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    actor: ActorDep,
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    job = _find_job(actor, session, job_id)
    try:
        new = service.rerun(actor, session, settings, store, job)
    except OpenSciError as exc:
        session.rollback()
        session.refresh(job)
        return _job_page(request, settings, session, actor, job, status=exc.status, error=exc.message)
    _wake(request)
    return see_other(f"/jobs/{new.id}")


# --- the Run form of a code repository --------------------------------------------------------------------

RUN_FIELDS = (
    "rev",
    "command",
    "inputs",
    "output",
    "branch",
    "requirements",
    "cpus",
    "memory",
    "time_limit",
    "executor",
)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_inputs(text: str) -> dict[str, dict[str, str | None]]:
    """`name=owner/name[@rev]`, one a line, into the spec's inputs (blank lines and `#` comments skipped)."""
    inputs: dict[str, dict[str, str | None]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, ref = line.partition("=")
        repo, _, rev = ref.strip().partition("@")
        if not sep or not name.strip() or not repo.strip():
            raise InvalidInput(
                f"Inputs, line {number}: write name=owner/name or name=owner/name@revision, not {line!r}",
                code="invalid_spec",
            )
        if name.strip() in inputs:
            raise InvalidInput(f"Inputs, line {number}: {name.strip()!r} is named twice", code="invalid_spec")
        inputs[name.strip()] = {"repo": repo.strip(), "rev": rev.strip() or None}
    return inputs


# Every message about the Run form names a field by its label on the form, whether it comes from the
# form's own checks, from the spec's validation (which names fields by their path in the spec) or from
# the compute service (which does too, as `resources.memory: …` or `input NAME: …`).
FIELD_LABELS = {
    "rev": "Revision",
    "command": "Command",
    "inputs": "Inputs",
    "output": "Output dataset",
    "branch": "Branch",
    "requirements": "Requirements",
    "cpus": "CPUs",
    "memory": "Memory",
    "time_limit": "Time limit",
    "executor": "Executor",
}
# The form field that fills each place in the spec (the longest matching start of a path wins).
SPEC_FIELDS: dict[tuple[str, ...], str] = {
    ("code",): "rev",
    ("command",): "command",
    ("inputs",): "inputs",
    ("output",): "output",
    ("output", "branch"): "branch",
    ("env", "requirements"): "requirements",
    ("resources", "cpus"): "cpus",
    ("resources", "memory"): "memory",
    ("resources", "time_limit"): "time_limit",
    ("executor",): "executor",
}
_SPEC_PREFIX = re.compile(r"^(?:input (?P<input>[^\s:]+)|(?P<path>[a-z_]+(?:\.[\w-]+)*)): ")


def form_label(loc: tuple[str | int, ...]) -> str:
    """How the Run form names the place `loc` of a spec (`("resources", "memory")` → `Memory`; an input
    by its name: `Inputs, catalog`); its dotted path if no field of the form fills it."""
    parts = tuple(str(x) for x in loc)
    for size in range(len(parts), 0, -1):
        field = SPEC_FIELDS.get(parts[:size])
        if field is not None:
            label = FIELD_LABELS[field]
            return f"{label}, {parts[1]}" if field == "inputs" and len(parts) > 1 else label
    return ".".join(parts)


def _field_of(loc: tuple[str | int, ...]) -> str | None:
    """The form field that fills the place `loc` of a spec, if one does."""
    parts = tuple(str(x) for x in loc)
    for size in range(len(parts), 0, -1):
        if parts[:size] in SPEC_FIELDS:
            return SPEC_FIELDS[parts[:size]]
    return None


def _first_line(text: str) -> str:
    """A message's first line: a parser's message may go on with the text and a caret under it."""
    return text.strip().split("\n", 1)[0].rstrip()


# The whole numbers of the form, as its fields ask for them: (example, unit).
_NUMBERS = {"cpus": ("2", ""), "time_limit": ("3600", " seconds")}
_NOT_WHOLE = ("int_parsing", "int_type", "int_from_float", "int_parsing_size", "float_parsing")


def _number_phrase(field: str, error: ErrorDetails) -> str | None:
    """What is wrong with a number typed in the form, in the form's words, or None."""
    example, unit = _NUMBERS[field]
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _NOT_WHOLE:
        return f"write a whole number{unit and ' of' + unit} such as {example}"
    bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
    if kind in ("greater_than_equal", "less_than_equal") and bound is not None:
        unit = unit.removesuffix("s") if bound == 1 else unit
        return f"{'at least' if kind == 'greater_than_equal' else 'at most'} {bound}{unit}"
    return None


def form_error(exc: ValidationError, limit: int = 5) -> str:
    """The spec's validation errors about a filled-in Run form, as sentences that each start with the
    field's label: the numbers typed in the form in its own words ("CPUs: write a whole number such as
    2", "Time limit: at least 1 second"), the rest in the spec's words (`spec_error_message`)."""
    sentences = []
    for error in exc.errors()[:limit]:
        loc = tuple(error["loc"])
        field = _field_of(loc)
        phrase = _number_phrase(field, error) if field in _NUMBERS else None
        if phrase is not None:
            sentences.append(f"{FIELD_LABELS[field]}: {phrase}")
        else:
            one = ValidationError.from_exception_data(exc.title, [error])  # type: ignore[list-item]
            sentence = _first_line(spec_error_message(one, where=form_label))
            label = f"{form_label(loc)}: "
            if field is not None and sentence.startswith(label):
                sentence = label + _phrase(sentence.removeprefix(label))
            sentences.append(sentence)
    more = len(exc.errors()) - limit
    if more > 0:
        sentences.append(f"and {more} more")
    return "; ".join(sentences) or "the job cannot run as filled in"


_REPR = r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"  # a Python repr of a string
_NOT_FOUND = re.compile(r"^repository (?P<repo>\S+) not found$")
_BAD_BRANCH = re.compile(rf"^invalid branch name (?P<name>{_REPR})(?P<rest>: .*)?$")
_NOT_ALLOWED = re.compile(
    rf"^requirement (?P<req>{_REPR}): (?P<what>.+?) (?:are|is) not allowed(?P<rest>.*)$"
)
_NO_WRITE = re.compile(r"^you may not write to (?P<repo>\S+), the job's output$")


def _phrase(text: str) -> str:
    """What the compute service says about a branch name or a requirement, as a plain phrase for under
    the field's label."""
    if (bad := _BAD_BRANCH.match(text)) is not None:
        return f"{bad['name']} is not a valid branch name{bad['rest'] or ''}"
    if (refused := _NOT_ALLOWED.match(text)) is not None:
        return f"{refused['what']} such as {refused['req']} are not allowed{refused['rest']}"
    return text.removeprefix("requirement ")


def _placed(message: str, form: dict[str, str] | None) -> tuple[str | None, str]:
    """The label of the form field a message of the compute service is about (None if it is about none
    of them) and what it says of it."""
    match = _SPEC_PREFIX.match(message)
    if match is not None:
        loc: tuple[str, ...] = (
            ("inputs", match["input"]) if match["input"] else tuple(match["path"].split("."))
        )
        field = _field_of(loc)
        if field is None:
            return None, message
        rest = message[match.end() :]
        # `Revision: revision 'x' not found`: the field's name is not said twice
        word = FIELD_LABELS[field].lower() + " "
        return form_label(loc), rest[len(word) :] if rest.lower().startswith(word) else rest
    if (found := _NOT_FOUND.match(message)) is not None:
        # Inputs are resolved before the output: the first that names the repository is the one.
        for name, ref in _input_refs((form or {}).get("inputs", "")):
            if ref == found["repo"]:
                return f"{FIELD_LABELS['inputs']}, {name}", message
        if (form or {}).get("output", "").strip() == found["repo"]:
            return FIELD_LABELS["output"], message
        return None, message
    if message.startswith("invalid branch name "):
        return FIELD_LABELS["branch"], message
    if message.startswith("requirement "):
        return FIELD_LABELS["requirements"], message
    if message.startswith("executor "):
        return FIELD_LABELS["executor"], message.removeprefix("executor ")
    if (denied := _NO_WRITE.match(message)) is not None:
        return FIELD_LABELS["output"], f"you may not write to {denied['repo']}"
    return None, message


def form_message(message: str, form: dict[str, str] | None = None) -> str:
    """A message of the compute service about a Run form, as one sentence that starts with the label
    of the field it concerns: the spec path it starts with (`resources.memory: …`, `input NAME: …`)
    named as the form names the field, and the messages that name no field (a repository not found,
    a branch name, a requirement, the executor) put under the field they are about, found from what
    they say and what `form` holds. Only the first line of a message of several lines is kept."""
    label, text = _placed(_first_line(message), form)
    return f"{label}: {_phrase(text)}" if label else text


def _input_refs(text: str) -> list[tuple[str, str]]:
    """The (name, repository) of each well-formed line of the Inputs field."""
    refs = []
    for line in text.splitlines():
        name, sep, ref = line.strip().partition("=")
        if sep and name.strip():
            refs.append((name.strip(), ref.strip().partition("@")[0].strip()))
    return refs


def build_spec(repo: Repository, form: dict[str, str]) -> JobSpec:
    """The job spec of a filled-in Run form (InvalidInput with a readable message if it is not one)."""
    resources: dict[str, Any] = {}
    for key in ("cpus", "memory", "time_limit"):
        if form[key].strip():
            resources[key] = form[key].strip()
    raw: dict[str, Any] = {
        "code": {"repo": repo.full_name, "rev": form["rev"].strip() or None},
        "command": form["command"],
        "inputs": parse_inputs(form["inputs"]),
        "env": {"requirements": _lines(form["requirements"])},
        "resources": resources,
    }
    if form["output"].strip():
        raw["output"] = {"repo": form["output"].strip(), "branch": form["branch"].strip() or None}
    elif form["branch"].strip():
        raise InvalidInput(
            "Output dataset: name the dataset that receives the outputs on this branch", code="invalid_spec"
        )
    if form["executor"].strip():
        raw["executor"] = form["executor"].strip()
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(form_error(exc), code="invalid_spec") from exc


def _code_repo(actor: Actor, session: Session, owner: str, name: str) -> Repository:
    return repos.get_repo(actor, session, owner, name, kind=RepoKind.code)


def _run_page(
    request: Request,
    settings: Settings,
    session: Session,
    store: GitStore,
    actor: Actor,
    repo: Repository,
    form: dict[str, str],
    status: int = 200,
    error: str = "",
) -> Response:
    recent = service.list_jobs(actor, session, repo=repo, limit=10)
    return repo_page(
        request,
        "jobs/run.html",
        actor,
        repo,
        repos.open_git(store, repo),
        "run",
        status=status,
        form=form,
        error=error,
        executors=settings.enabled_executors,
        default_executor=settings.compute_default_executor,
        recent=[service.job_dict(settings, session, j) for j in recent],
        **FORMAT,
    )


def run_form(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    actor: ActorDep,
) -> Response:
    repo = _code_repo(actor, session, owner, name)
    if actor.user is None:
        return login_redirect(request)
    form = dict.fromkeys(RUN_FIELDS, "")
    form["rev"] = repo.default_branch
    form["cpus"] = "1"
    return _run_page(request, settings, session, store, actor, repo, form)


def run_submit(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    actor: ActorDep,
    rev: FormStr = "",
    command: FormStr = "",
    inputs: FormStr = "",
    output: FormStr = "",
    branch: FormStr = "",
    requirements: FormStr = "",
    cpus: FormStr = "",
    memory: FormStr = "",
    time_limit: FormStr = "",
    executor: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    repo = _code_repo(actor, session, owner, name)
    form = {
        "rev": rev,
        "command": command,
        "inputs": inputs,
        "output": output,
        "branch": branch,
        "requirements": requirements,
        "cpus": cpus,
        "memory": memory,
        "time_limit": time_limit,
        "executor": executor,
    }
    try:
        job = service.submit(actor, session, settings, store, build_spec(repo, form))
    except OpenSciError as exc:
        if exc.status >= 500:
            raise
        session.rollback()
        # A repository or revision named in the form that is not found is a mistake in the form (422).
        status = 422 if exc.status == 404 else exc.status
        return _run_page(
            request,
            settings,
            session,
            store,
            actor,
            repo,
            form,
            status=status,
            error=form_message(exc.message, form),
        )
    _wake(request)
    return see_other(f"/jobs/{job.id}")


# Registered by `opensci.web.mount` with the repository pages (code repositories only: not under /datasets).
RUN_PAGES: list[tuple[str, Callable[..., Response], list[str]]] = [
    ("/{owner}/{name}/run", run_form, ["GET"]),
    ("/{owner}/{name}/run", run_submit, ["POST"]),
]
