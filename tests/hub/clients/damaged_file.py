"""A file whose stored content is damaged (the test quarantined it): hf_hub_download and `hf download`
fail at once, not after the client's retries, and what they show holds the server's message, not only
the client's "check your connection".

Then, as the message says, uploading the file again (upload_file) repairs it: the preupload does not
stumble on the damaged content it would compare the file with.

Environment: HF_ENDPOINT, HF_TOKEN, REPO (holding f.bin, damaged), MESSAGE (a part of the server's),
ORIGINAL (a path to the file's right content)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

repo, message = os.environ["REPO"], os.environ["MESSAGE"]
FAST = 10.0  # seconds; the client's retries of a 5xx take about 23

start = time.monotonic()
try:
    hf_hub_download(repo, "f.bin")
    raise SystemExit("a damaged file cannot download")
except LocalEntryNotFoundError as exc:  # the client's class for any failed HEAD but 401 and "not found"
    took = time.monotonic() - start
    assert took < FAST, f"hf_hub_download took {took:.1f} s to fail"
    cause = exc.__cause__
    assert isinstance(cause, HfHubHTTPError), repr(cause)
    assert cause.response.status_code == 409, cause.response.status_code
    assert message in cause.response.headers["X-Error-Message"], cause.response.headers
    assert "\\u" not in cause.response.headers["X-Error-Message"], "typography came through escaped"
    assert message in str(cause), str(cause)
    printed = "".join(traceback.format_exception(exc))  # what an uncaught error shows
    assert message in printed, printed

start = time.monotonic()
cli = subprocess.run(
    [sys.executable, "-m", "huggingface_hub.cli.hf", "download", repo, "f.bin"],
    capture_output=True,
    text=True,
    timeout=120,
)
took = time.monotonic() - start
assert cli.returncode != 0 and took < FAST + 5, (cli.returncode, took)
assert message in cli.stderr + cli.stdout, cli.stderr

original = os.environ["ORIGINAL"]
HfApi().upload_file(path_or_fileobj=original, path_in_repo="f.bin", repo_id=repo)
with open(hf_hub_download(repo, "f.bin", force_download=True), "rb") as got, open(original, "rb") as want:
    assert got.read() == want.read(), "the repaired file differs"
print("ALL OK")
