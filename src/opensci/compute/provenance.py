"""The provenance graph of a job as an inline SVG: code@commit and input datasets@commit → job → output.

Pure: it takes the JSON of a job (`service.job_dict`) and returns SVG text, nothing else. Every label
comes from users (repository names, branches, input names) and is escaped here, so the SVG can go into a
page as it is. Each box is a link: the code and inputs to their files at the exact commit, the job to its
page, the output to the commit the job made (or to its branch while there is none yet). Colours come
from CSS classes (`prov-*`, styled in opensci.css).
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

BOX_W = 230
BOX_H = 46
GAP = 14
JOB_W = 170
COL_GAP = 60
PAD = 8
MAX_CHARS = 30  # a label longer than this is cut (the full text is the box's tooltip)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _cut(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def repo_url(ref: dict[str, Any], view: str, rev: str) -> str:
    """The page of a repository reference (`{repo, kind}`) at `view` (`tree`, `commit`) of `rev`."""
    owner, _, name = str(ref.get("repo", "")).partition("/")
    prefix = "/datasets" if ref.get("kind") == "dataset" else ""
    return f"{prefix}/{quote(owner, safe='')}/{quote(name, safe='')}/{view}/{quote(rev, safe='/')}"


def _box(x: float, y: float, w: float, role: str, href: str, title: str, line1: str, line2: str) -> str:
    cx = x + w / 2
    return (
        f'<a class="prov-node prov-{_e(role)}" href="{_e(href)}">'
        f"<title>{_e(title)}</title>"
        f'<rect x="{x}" y="{y}" width="{w}" height="{BOX_H}" rx="6"/>'
        f'<text class="prov-name" x="{cx}" y="{y + 19}" text-anchor="middle">{_e(_cut(line1))}</text>'
        f'<text class="prov-detail" x="{cx}" y="{y + 36}" text-anchor="middle">{_e(_cut(line2))}</text>'
        "</a>"
    )


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    mid = (x1 + x2) / 2
    return (
        f'<path class="prov-edge" d="M{x1} {y1} C{mid} {y1} {mid} {y2} {x2 - 6} {y2}" fill="none"/>'
        f'<path class="prov-head" d="M{x2 - 7} {y2 - 4} L{x2} {y2} L{x2 - 7} {y2 + 4} Z"/>'
    )


def provenance_svg(job: dict[str, Any]) -> str:
    """The graph of `job` (the shape of `GET /api/v1/jobs/{id}`), as an SVG element."""
    sources: list[tuple[str, str, str, str, str]] = []  # role, href, title, line1, line2
    code = job["code"]
    sources.append(
        (
            "code",
            repo_url(code, "tree", code["commit"]),
            f"code: {code['repo']} at {code['commit']}",
            code["repo"],
            f"code @ {code['commit'][:10]}",
        )
    )
    for name, ref in job.get("inputs", {}).items():
        sources.append(
            (
                "input",
                repo_url(ref, "tree", ref["commit"]),
                f"input {name}: {ref['repo']} at {ref['commit']}",
                ref["repo"],
                f"{name} @ {ref['commit'][:10]}",
            )
        )
    n = len(sources)
    height = max(n * BOX_H + (n - 1) * GAP, BOX_H) + 2 * PAD
    output = job.get("output")
    job_x = PAD + BOX_W + COL_GAP
    out_x = job_x + JOB_W + COL_GAP
    width = (out_x + BOX_W if output else job_x + JOB_W) + PAD
    mid_y = height / 2
    job_y = mid_y - BOX_H / 2
    label = f"Provenance of job {job['id']}: {n - 1} input{'s' if n != 2 else ''}" + (
        f", output {output['repo']}" if output else ", no output"
    )
    parts = [
        f'<svg class="provenance" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{_e(label)}">'
    ]
    for i, (role, href, title, line1, line2) in enumerate(sources):
        y = PAD + i * (BOX_H + GAP)
        parts.append(_arrow(PAD + BOX_W, y + BOX_H / 2, job_x, mid_y))
        parts.append(_box(PAD, y, BOX_W, role, href, title, line1, line2))
    status = str(job.get("status", ""))
    job_title = f"job {job['id']}: {status}"
    role = f"job prov-status-{status}"
    parts.append(
        _box(job_x, job_y, JOB_W, role, f"/jobs/{int(job['id'])}", job_title, f"job {job['id']}", status)
    )
    if output:
        commit = output.get("commit")
        if commit:
            href, detail = repo_url(output, "commit", commit), f"{output['branch']} @ {commit[:10]}"
            title = f"output: {output['repo']} at {commit} (branch {output['branch']})"
        else:
            href, detail = repo_url(output, "tree", output["branch"]), f"{output['branch']} (no commit yet)"
            title = f"output: {output['repo']}, branch {output['branch']}; no commit yet"
        parts.append(_arrow(job_x + JOB_W, mid_y, out_x, mid_y))
        parts.append(_box(out_x, job_y, BOX_W, "output", href, title, output["repo"], detail))
    parts.append("</svg>")
    return "".join(parts)
