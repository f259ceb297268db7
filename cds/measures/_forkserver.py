"""Preloaded by the video workers' fork server: runs the parent's main script there, once.

Every worker of a ``multiprocessing`` pool first re-runs the parent's main
script (the ``runform-cds`` command, a benchmark, pytest) to rebuild its
``__main__``. CPython 3.11's fork server means to do that once for all its
forks when ``"__main__"`` is preloaded, but it reads a key that ``spawn``
never sets (``main_path`` for ``init_main_from_path``), so each worker pays
for it before its first frame. Importing this module in the server does it
there; each fork inherits the result, and ``spawn`` skips a main in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import spawn

__all__ = ["MAIN_ENV", "main_handed_to_server"]

#: "<parent pid>:<main script path>", set only while the parent starts the server
MAIN_ENV = "RUNFORM_FORKSERVER_MAIN"


@contextmanager
def main_handed_to_server() -> Iterator[None]:
    """Around starting the fork server: tell it which main script to run.

    The variable is removed again at once, so no other child process (a CLI
    run from a test, say) inherits it and runs someone else's main script.
    """
    path = spawn.get_preparation_data("worker").get("init_main_from_path")
    if path:
        os.environ[MAIN_ENV] = f"{os.getpid()}:{path}"
    try:
        yield
    finally:
        os.environ.pop(MAIN_ENV, None)


def _run_parent_main() -> None:
    parent, _, path = os.environ.get(MAIN_ENV, "").partition(":")
    if parent != str(os.getppid()) or not path:  # not the server of the process that set it
        return
    try:
        spawn.import_main_path(path)
    except Exception:  # each worker then runs it itself, as it would without this module
        return


_run_parent_main()
