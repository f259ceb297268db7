"""Continuous load for the tests: threads calling patient-view without pause."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from cds.client import CdsClient, JwtSigner
from cds.examples import hook_request

PV = "runform-patient-view"


@dataclass(frozen=True)
class Call:
    """One call: when its answer (or failure) came, and what it was."""

    at: float  # time.monotonic()
    status: int  # 0: no answer (the connection failed or was closed)
    hook_instance: str
    #: the first card's summary for a 200 ("" without cards), else the error
    detail: str


class Load:
    """``threads`` clients calling the service at ``url`` until the block ends (or
    :meth:`stop`), recording every call."""

    def __init__(self, url: str, signer: JwtSigner, threads: int = 2, timeout: float = 15):
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(CdsClient(url, signer, timeout=timeout),))
            for _ in range(threads)
        ]

    @property
    def answered(self) -> list[str]:
        """The hookInstances of the calls answered 200, in the order answered."""
        return [c.hook_instance for c in self.calls if c.status == 200]

    @property
    def failed(self) -> list[Call]:
        return [c for c in self.calls if c.status != 200]

    def _run(self, client: CdsClient) -> None:
        while not self._stop.is_set():
            body = hook_request("patient-view", "p1")
            try:
                r = client.call(PV, body)
                status, detail = r.status_code, _detail(r)
            except httpx.HTTPError as exc:
                status, detail = 0, type(exc).__name__
            with self._lock:
                self.calls.append(Call(time.monotonic(), status, body["hookInstance"], detail))
        client.close()

    def wait_for(self, answered: int, timeout: float = 60) -> None:
        """Until ``answered`` calls in all have been answered."""
        deadline = time.monotonic() + timeout
        while len(self.answered) < answered:
            assert time.monotonic() < deadline, f"only {len(self.answered)} calls answered"
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def _detail(r: Any) -> str:
    if r.status_code != 200:
        return f"HTTP {r.status_code}"
    cards = r.json()["cards"]
    return str(cards[0]["summary"]) if cards else ""
