"""Wire shapes of the compute domain: the job spec people submit (validated strictly) and its parts.

`POST /api/v1/jobs` validates the JSON body with `parse_spec`: JSON types are not coerced (`"cpus": "2"`
and `"network": "yes"` are refused), and every refusal is one sentence naming the field
(`spec_error_message`). The documented string forms stay: a memory size such as `"4G"`, and the
command as one shell line. Sizes are bounded well under what Linux lets one `exec` carry (ARG_MAX):
the command and the environment variables are each at most 64 KiB.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opensci.errors import InvalidInput
from opensci.repos.gitstore import valid_ref_name

INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REPO_NAME = re.compile(r"^[^/\s\x00-\x1f\x7f]+/[^/\s\x00-\x1f\x7f]+$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)

# Linux refuses an exec whose arguments and environment together pass ARG_MAX (2 MiB by default, less
# with a small stack limit) and any one string over 128 KiB: a spec stays far below both.
MAX_COMMAND_BYTES = 64 * 1024  # the command's words in UTF-8, each counted with its terminating NUL
MAX_COMMAND_WORDS = 4096
MAX_WORD_CHARS = 10_000
MAX_VARIABLES = 256
MAX_VARIABLES_BYTES = 64 * 1024  # NAME=value in UTF-8, each counted with its terminating NUL
MAX_VARIABLE_CHARS = 4096
MAX_MEMORY = 1024**5  # 1 PiB: above any machine, and far inside the database's 64-bit column
MIN_MEMORY = 16 * 1024**2  # below what a small program needs: the job would be killed as it starts
MAX_TIME_LIMIT = 2**31 - 1  # seconds (68 years); the column is a 32-bit integer
MAX_SPEC_BYTES = 2 * 1024**2  # a JSON body larger than this cannot hold a valid spec
# A valid spec nests 3 deep (the spec, "inputs", an input); Python's JSON decoder gives up
# (RecursionError) somewhere under 1000 levels, depending on how deep the stack already is.
MAX_SPEC_DEPTH = 32


def _utf8_size(text: str, what: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text (it holds an unpaired surrogate)") from None


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as `512M`, `4G`, `1.5GiB`: K, M, G, T count in powers of 1024,
    with or without `i` and `B`, as Slurm's `--mem=4G` does."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a number of bytes or a size such as 4G")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size; write bytes or e.g. 512M, 4G")
        number, unit = float(m.group(1)), (m.group(2) or "").lower()
        scaled = number * 1024 ** _POWERS[unit[0]] if unit else number
        if not math.isfinite(scaled) or scaled > MAX_MEMORY:  # 400 nines are an infinite float
            raise ValueError("at most 1024T (1 PiB)")
        size = int(scaled)
    if size <= 0:
        raise ValueError("must be positive")
    if size > MAX_MEMORY:
        raise ValueError("at most 1024T (1 PiB)")
    return size


def split_command(value: Any) -> list[str]:
    """The command's words, from a list of strings or one string split like a shell does, within the
    limits an `exec` can carry."""
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from exc
    elif isinstance(value, list) and all(isinstance(w, str) for w in value):
        words = value
    else:
        raise ValueError("must be a list of words (strings) or one shell line (a string)")
    if not words or not words[0].strip():
        raise ValueError("the command is empty")
    if len(words) > MAX_COMMAND_WORDS:
        raise ValueError(f"{len(words)} words; at most {MAX_COMMAND_WORDS} words")
    total = 0
    for i, word in enumerate(words):
        if "\x00" in word:
            raise ValueError("the command contains a NUL character")
        if len(word) > MAX_WORD_CHARS:
            raise ValueError(f"word {i} is longer than {MAX_WORD_CHARS} characters")
        total += _utf8_size(word, f"word {i}") + 1
    if total > MAX_COMMAND_BYTES:
        raise ValueError(
            f"{total} bytes long; at most {MAX_COMMAND_BYTES} bytes (64 KiB) in all: "
            "pass large data in a file of the code or an input"
        )
    return words


class RepoRev(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(description="owner/name of the repository")
    rev: str | None = Field(None, description="branch, tag or commit; default: the default branch")

    @field_validator("repo")
    @classmethod
    def _name(cls, v: str) -> str:
        if not REPO_NAME.match(v):
            raise ValueError(f"{v!r} is not owner/name")
        return v

    @field_validator("rev")
    @classmethod
    def _rev(cls, v: str | None) -> str | None:
        if v is not None and CONTROL.search(v):
            raise ValueError(f"{v!r} is not a branch, tag or commit")
        return v


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(description="owner/name of the dataset (or model) that receives the outputs")
    branch: str | None = Field(
        None, description="branch to commit to (created if new); default branch if unset"
    )

    _name = field_validator("repo")(RepoRev._name.__func__)  # type: ignore[attr-defined]

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        """A branch name by git's rules (as `refs/heads/<name>` too), so that a bad one is refused with the
        spec's other mistakes (`invalid_spec`, naming `output.branch`)."""
        if v is None:
            return v
        if CONTROL.search(v):  # pygit2 would read the name only up to a NUL
            raise ValueError(f"{v!r} is not a branch name")
        name = v.removeprefix("refs/heads/")
        try:
            valid_ref_name("heads", name)
        except InvalidInput as exc:  # "invalid branch name 'x'", perhaps with ": why"
            why = exc.message.removeprefix(f"invalid branch name {name!r}")
            raise ValueError(f"invalid branch name {v!r}{why}") from None
        return v


class EnvSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requirements: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list, max_length=200, description="pip requirements (wheels only)"
    )
    variables: dict[str, Annotated[str, Field(max_length=MAX_VARIABLE_CHARS)]] = Field(
        default_factory=dict,
        max_length=MAX_VARIABLES,
        description="extra environment variables of the command (at most 64 KiB in all)",
    )
    network: bool = Field(False, description="whether the command may use the network (sandboxed jobs)")

    @field_validator("variables")
    @classmethod
    def _vars(cls, v: dict[str, str]) -> dict[str, str]:
        total = 0
        for key, value in v.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if key.startswith("OPENSCI_") or key in ("PATH", "HOME", "VIRTUAL_ENV"):
                raise ValueError(f"{key} is set by the platform")
            if "\x00" in value:
                raise ValueError(f"the value of {key} contains a NUL character")
            total += len(key) + 1 + _utf8_size(value, f"the value of {key}") + 1
        if total > MAX_VARIABLES_BYTES:
            raise ValueError(f"{total} bytes long; at most {MAX_VARIABLES_BYTES} bytes (64 KiB) in all")
        return v


class ResourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: int = Field(1, ge=1, le=1024)
    memory: int | str | None = Field(None, description="bytes, or a size such as 4G; default from settings")
    time_limit: int | None = Field(
        None, ge=1, le=MAX_TIME_LIMIT, description="seconds; default from settings"
    )
    gpus: int = Field(0, ge=0, le=64)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int | None:
        if v is None:
            return None
        size = parse_size(v)
        if size < MIN_MEMORY:
            raise ValueError(
                f"at least {MIN_MEMORY // 1024**2} MiB; {v!r} is {size} byte{'s' if size != 1 else ''} "
                "(a number alone counts bytes: write a size such as 512M or 4G)"
            )
        return size


class JobSpec(BaseModel):
    """What to run: code at a revision, a command, named inputs, where outputs go, environment, resources."""

    model_config = ConfigDict(extra="forbid")
    code: RepoRev
    command: list[Annotated[str, Field(max_length=MAX_WORD_CHARS)]] | str = Field(
        description="the command as shell words (a list), or one string split like a shell does; "
        f"at most {MAX_COMMAND_WORDS} words and 64 KiB in all"
    )
    inputs: dict[str, RepoRev] = Field(default_factory=dict, max_length=64)
    output: OutputSpec | None = None
    env: EnvSpec = Field(default_factory=EnvSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    executor: str | None = None
    priority: int = Field(
        0, ge=-100, le=100, description="higher runs first; above 0 for administrators only"
    )

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> list[str]:
        return split_command(v)

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: dict[str, RepoRev]) -> dict[str, RepoRev]:
        for name in v:
            if not INPUT_NAME.match(name):
                raise ValueError(
                    f"input name {name!r}: use letters, digits, '.', '_' or '-' (it becomes inputs/<name>/)"
                )
        return v


class JobOut(BaseModel):
    """The shape of `GET /api/v1/jobs/{id}` (documented in the OpenAPI schema)."""

    model_config = ConfigDict(extra="allow")
    id: int
    status: str
    phase: str
    url: str
    submitter: str | None
    spec: dict[str, Any]
    code: dict[str, Any]
    inputs: dict[str, Any]
    output: dict[str, Any] | None
    executor: str
    resources: dict[str, Any]
    environment: dict[str, Any]
    usage: dict[str, Any]
    exit_code: int | None
    reason: str
    message: str
    attempts: int
    priority: int
    rerun_of: int | None
    created_at: str
    started_at: str | None
    ended_at: str | None


# --- reading a spec from a request body, and saying plainly what is wrong with it --------------------------

_PARTS: dict[str, type[BaseModel]] = {
    "code": RepoRev,
    "output": OutputSpec,
    "env": EnvSpec,
    "resources": ResourceSpec,
}
_JSON_TYPES = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec's part at `loc` (a pydantic error location), if it is a part with named fields."""
    if not loc:
        return JobSpec
    if len(loc) == 1 and isinstance(loc[0], str):
        return _PARTS.get(loc[0])
    if len(loc) == 2 and loc[0] == "inputs":
        return RepoRev
    return None


def _plain(error: Any) -> str:
    """One pydantic error as a phrase about its field (which the caller names)."""
    kind, loc, value, ctx = error["type"], tuple(error["loc"]), error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        fields = f"; the fields are: {', '.join(model.model_fields)}" if model else ""
        return f"unknown field (not permitted){fields}"
    wanted = {
        "int_type": "a whole number",
        "int_from_float": "a whole number",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "an object",
        "model_type": "an object",
    }.get(kind)
    if wanted:
        return f"must be {wanted}, not {_json_type(value)} ({json.dumps(value, default=str)[:40]})"
    if kind == "string_too_long":
        return f"longer than {ctx.get('max_length')} characters"
    if kind == "too_long":
        actual = ctx.get("actual_length") or (len(value) if isinstance(value, list | dict) else "too many")
        return f"{actual} items; at most {ctx.get('max_length')}"
    message = str(error.get("msg", ""))
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    return message.replace("Input should be", "must be", 1)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(x) for x in loc)


def spec_error_message(
    exc: ValidationError, *, limit: int = 5, where: Callable[[tuple[str | int, ...]], str] = _dotted
) -> str:
    """Pydantic's errors about a spec as one readable sentence: `field.path: what is wrong; …`. `where`
    names the place of each error (its dotted path in the spec by default; a form names it by a label)."""
    parts = []
    for error in exc.errors()[:limit]:
        loc = tuple(error["loc"])
        what = _plain(error)
        parts.append(f"{where(loc)}: {what}" if loc else what)
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "the job spec is not valid"


def _refused(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_spec")


def spec_too_large() -> InvalidInput:
    return _refused(
        f"the job spec is larger than {MAX_SPEC_BYTES // 1024**2} MiB; the command and the environment "
        "variables may take 64 KiB each: pass large data in a file of the code or an input"
    )


def _nesting(value: Any) -> int:
    """How deep JSON arrays and objects nest in `value` (0 for a scalar); counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_SPEC_DEPTH:  # deeper is refused anyway
                stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _too_deep() -> InvalidInput:
    return _refused(
        f"the request body is nested too deeply: a job spec has at most {MAX_SPEC_DEPTH} levels of JSON "
        "arrays and objects inside one another"
    )


def parse_spec(body: bytes) -> JobSpec:
    """The job spec in a JSON request body, validated strictly (JSON types are not coerced). Anything
    else is refused with 422 `invalid_spec` and a plain sentence naming the field."""
    if len(body) > MAX_SPEC_BYTES:
        raise spec_too_large()
    if not body.strip():
        raise _refused("the request body is empty; send the job spec as a JSON object")
    try:
        raw = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _refused(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise _refused("the request body is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:  # Python's bound on nesting: far deeper than any spec
        raise _too_deep() from None
    except ValueError:  # Python's bound on the digits of an integer
        raise _refused(
            "the request body is not valid JSON: it holds a number of thousands of digits"
        ) from None
    if not isinstance(raw, dict):
        raise _refused(
            f'the job spec must be a JSON object ({{"code": …, "command": …}}), not {_json_type(raw)}'
        )
    if _nesting(raw) > MAX_SPEC_DEPTH:  # nor may validation and its messages recurse through it
        raise _too_deep()
    try:
        return JobSpec.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise _refused(spec_error_message(exc)) from None
