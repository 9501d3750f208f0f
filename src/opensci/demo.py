"""The small demo that `make serve` seeds: an admin, an organization, one public repository of each kind."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensci.accounts import service as accounts
from opensci.accounts.models import Owner
from opensci.accounts.permissions import Actor
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore, Upload

ORG = "demo-lab"

CODE_README = """# hello-science

A tiny analysis package from the **Demo Lab**, hosted on OpenSci.

```bash
git clone {base}/demo-lab/hello-science.git
python -m hello_science
```

| file | what it does |
|---|---|
| `hello_science/__main__.py` | prints the mean of the sample catalog |
| `hello_science/brightest.py` | as a job: the brightest stars of `inputs/stars/` into `outputs/` |
"""

CODE_MAIN = '''"""Mean magnitude of a few stars."""

MAGNITUDES = [12.1, 13.4, 11.8, 14.2]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


if __name__ == "__main__":
    print(f"mean magnitude: {mean(MAGNITUDES):.2f}")
'''

CODE_BRIGHTEST = '''"""The brightest stars of a catalog; run it as a job with star-sample as input `stars`:

    opensci job submit --code demo-lab/hello-science --input stars=demo-lab/star-sample \\
        --output YOU/star-results --follow -- python -m hello_science.brightest 5
"""

import csv
import sys
from pathlib import Path

count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
with open(Path("inputs/stars/data/stars.csv"), newline="") as f:
    stars = sorted(csv.DictReader(f), key=lambda row: float(row["vmag"]))
with open(Path("outputs/brightest.csv"), "w", newline="") as f:
    out = csv.DictWriter(f, fieldnames=list(stars[0]))
    out.writeheader()
    out.writerows(stars[:count])
for row in stars[:count]:
    print(f"{row['name']:12} V = {row['vmag']}")
'''

DATA_README = """---
license: cc-by-4.0
---
# star-sample

Twelve bright stars with positions (ICRS, degrees) and V magnitudes: a small open dataset.
"""

DATA_CSV = """name,ra,dec,vmag
Sirius,101.287,-16.716,-1.46
Canopus,95.988,-52.696,-0.74
Arcturus,213.915,19.182,-0.05
Vega,279.235,38.784,0.03
Capella,79.172,45.998,0.08
Rigel,78.634,-8.202,0.13
Procyon,114.825,5.225,0.34
Betelgeuse,88.793,7.407,0.42
Achernar,24.429,-57.237,0.46
Hadar,210.956,-60.373,0.61
Altair,297.696,8.868,0.76
Acrux,186.650,-63.099,0.76
"""

MODEL_README = """---
license: mit
---
# photo-z-linear

A linear photometric-redshift model: `z = w · colors + b`, weights in `weights.json`.
"""

MODEL_WEIGHTS = '{"w": [0.21, -0.08, 0.33, 0.05], "b": 0.02, "features": ["u-g", "g-r", "r-i", "i-z"]}\n'


def seed(session: Session, store: GitStore, password: str, base_url: str = "http://127.0.0.1:8000") -> bool:
    """Create the demo unless it exists. Returns whether anything was created."""
    if session.scalar(select(Owner.id).where(Owner.name_key == ORG)):
        return False
    admin = accounts.create_user(
        session, "admin", password, email="admin@example.org", display_name="Demo Admin", is_admin=True
    )
    admin.affiliation = "OpenSci Demo Observatory"
    actor = Actor.for_user(session, admin)
    accounts.create_org(
        actor, session, ORG, display_name="Demo Lab", description="A lab that shares code, data and models."
    )
    session.commit()
    contents = [
        (
            "hello-science",
            "code",
            "A tiny analysis package.",
            "MIT",
            ["python", "astronomy"],
            {
                "README.md": CODE_README.format(base=base_url),
                "hello_science/__init__.py": "",
                "hello_science/__main__.py": CODE_MAIN,
                "hello_science/brightest.py": CODE_BRIGHTEST,
            },
        ),
        (
            "star-sample",
            "dataset",
            "Twelve bright stars with positions and magnitudes.",
            "CC-BY-4.0",
            ["astronomy", "catalog"],
            {"README.md": DATA_README, "data/stars.csv": DATA_CSV},
        ),
        (
            "photo-z-linear",
            "model",
            "A linear photometric-redshift model.",
            "MIT",
            ["photometric-redshift"],
            {"README.md": MODEL_README, "weights.json": MODEL_WEIGHTS},
        ),
    ]
    for name, kind, description, license, tags, files in contents:
        repo = repos.create_repo(
            actor,
            session,
            store,
            name=name,
            kind=kind,
            owner=ORG,
            description=description,
            license=license,
            tags=tags,
        )
        changes = {path: Upload(data=text.encode()) for path, text in files.items()}
        repos.commit_files(actor, session, store, repo, changes, message=f"Add {name}")
    return True
