"""Serve ``benchmarks.bench_app`` the way ``runform-cds serve`` serves the service.

    python benchmarks/serve_bench.py PORT WORKERS    (with $RUNFORM_CDS_CONFIG set)

``latency.py`` starts it with the source tree under test first on ``PYTHONPATH``.
A tree from before ``cds.service.server.serve`` existed is served as it was
then benchmarked: by uvicorn's own runner (one socket shared by the workers), with
h11 on asyncio's loop, as uvicorn chose before httptools was installed.
"""

from __future__ import annotations

import sys

from cds.config import load_settings

APP = "benchmarks.bench_app:app"
QUIET = {"host": "127.0.0.1", "log_level": "warning", "access_log": False}


def main(port: int, workers: int) -> int:
    try:
        from cds.service.server import serve
    except ImportError:
        import uvicorn

        uvicorn.run(APP, port=port, workers=workers, http="h11", loop="asyncio", **QUIET)  # type: ignore[arg-type]
        return 0
    return serve(APP, load_settings(), workers=workers, port=port, **QUIET)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
