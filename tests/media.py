"""Real test media, fetched from PyPI on first use and cached; never committed.

Sports2D's wheel carries ``Sports2D/Demo/demo.mp4`` (a person walking across
a park, side view, 30 fps, with a second person on a roof). It is taken with
``pip download --no-deps`` (nothing is installed) and pinned by its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SPORTS2D = "sports2d==0.8.34"
DEMO_MEMBER = "Sports2D/Demo/demo.mp4"
DEMO_SHA256 = "d9a66417185647b112304b57093f0c180f37a768e6a14daca75ca541f3b78039"


def cache_dir() -> Path:
    root = os.environ.get("RUNFORM_TEST_MEDIA") or Path.home() / ".cache" / "runform-cds" / "media"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def demo_video() -> Path:
    """The Sports2D demo clip, downloaded once and checked against its pinned hash."""
    target = cache_dir() / "sports2d-0.8.34-demo.mp4"
    if target.exists() and sha256(target) == DEMO_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", SPORTS2D, "-d", tmp],
            check=True,
            timeout=300,
        )
        wheel = next(Path(tmp).glob("sports2d-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(DEMO_MEMBER)
    if hashlib.sha256(data).hexdigest() != DEMO_SHA256:
        raise RuntimeError(f"{SPORTS2D} {DEMO_MEMBER} changed: SHA-256 does not match the pin")
    target.write_bytes(data)
    return target
