"""The provenance graph's SVG: boxes that link to exactly what a job ran on and made, labels escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from opensci.compute.provenance import provenance_svg

SVG = "{http://www.w3.org/2000/svg}"
CODE = "a" * 40
DATA = "b" * 40
OUT = "c" * 40


def job(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 7,
        "status": "succeeded",
        "code": {"repo": "alice/fit", "kind": "code", "rev": "main", "commit": CODE},
        "inputs": {"catalog": {"repo": "lab/gaia", "kind": "dataset", "rev": "v1", "commit": DATA}},
        "output": {"repo": "alice/results", "kind": "dataset", "branch": "runs", "commit": OUT},
    }
    return {**base, **changes}


def nodes(svg: str) -> list[tuple[str, str, list[str]]]:
    """(class, href, texts) of every box, parsed as XML (so the SVG must be well formed)."""
    root = ET.fromstring(svg)
    return [
        (a.get("class", ""), a.get("href", ""), [t.text or "" for t in a.iter(f"{SVG}text")])
        for a in root.iter(f"{SVG}a")
    ]


def test_code_and_inputs_point_to_the_job_which_points_to_the_output() -> None:
    svg = provenance_svg(job())
    assert nodes(svg) == [
        ("prov-node prov-code", f"/alice/fit/tree/{CODE}", ["alice/fit", f"code @ {CODE[:10]}"]),
        ("prov-node prov-input", f"/datasets/lab/gaia/tree/{DATA}", ["lab/gaia", f"catalog @ {DATA[:10]}"]),
        ("prov-node prov-job prov-status-succeeded", "/jobs/7", ["job 7", "succeeded"]),
        (
            "prov-node prov-output",
            f"/datasets/alice/results/commit/{OUT}",
            ["alice/results", f"runs @ {OUT[:10]}"],
        ),
    ]
    # one arrow per source into the job, one out of it
    assert svg.count('class="prov-edge"') == 3
    root = ET.fromstring(svg)
    assert root.get("role") == "img" and "Provenance of job 7: 1 input, output alice/results" in root.get(
        "aria-label", ""
    )


def test_without_output_or_inputs_and_before_the_output_commit() -> None:
    bare = provenance_svg(job(inputs={}, output=None, status="running"))
    assert [n[0] for n in nodes(bare)] == ["prov-node prov-code", "prov-node prov-job prov-status-running"]
    assert bare.count('class="prov-edge"') == 1 and "no output" in bare
    pending = nodes(provenance_svg(job(output={**job()["output"], "commit": None}, status="running")))
    assert pending[-1][1] == "/datasets/alice/results/tree/runs"
    assert pending[-1][2] == ["alice/results", "runs (no commit yet)"]
    # a model as input links without /datasets
    model = {"repo": "alice/net", "kind": "model", "rev": "main", "commit": DATA}
    assert nodes(provenance_svg(job(inputs={"w": model})))[1][1] == f"/alice/net/tree/{DATA}"


def test_every_label_and_link_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&'
    svg = provenance_svg(
        job(
            inputs={hostile: {"repo": 'ev"il/na<me', "kind": "dataset", "rev": "x", "commit": DATA}},
            output={"repo": "alice/results", "kind": "dataset", "branch": 'b"><script>', "commit": None},
            status='x" onload="alert(1)',
        )
    )
    assert "<script" not in svg and 'onload="' not in svg
    parsed = nodes(svg)  # well-formed XML despite everything
    assert parsed[1][1] == f"/datasets/ev%22il/na%3Cme/tree/{DATA}"
    assert parsed[1][2][1].startswith("<script>alert")  # shown as text, cut to fit
    assert parsed[3][1] == "/datasets/alice/results/tree/b%22%3E%3Cscript%3E"
    titles = [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")]
    assert f'input {hostile}: ev"il/na<me at {DATA}' in titles  # the full text, as a tooltip


def test_long_names_are_cut_and_many_inputs_stack() -> None:
    inputs = {
        f"in{i}": {"repo": f"lab/{'x' * 50}{i}", "kind": "dataset", "rev": "main", "commit": DATA}
        for i in range(5)
    }
    svg = provenance_svg(job(inputs=inputs))
    texts = [n[2][0] for n in nodes(svg)]
    assert all(len(t) <= 30 for t in texts) and texts[1].endswith("…")
    height = int(ET.fromstring(svg).get("height", "0"))
    ys = [float(y) for y in re.findall(r'<rect x="8" y="([\d.]+)"', svg)]
    assert len(ys) == 6 and ys == sorted(ys) and ys[-1] + 46 <= height
