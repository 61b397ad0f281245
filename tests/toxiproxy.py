"""Toxiproxy (started by scripts/services.sh) through its HTTP API, in plain httpx.

A test puts a proxy between the app or worker and one real service, points the app at the
proxy's port, and adds toxics (latency, bandwidth, reset_peer, timeout, ...) for a while. Only the
proxy is faulted: the service itself, shared with other test runs, is never touched. The
PyPI client is unmaintained (2019), hence these few lines.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import httpx

from tests.live import free_port, unique

API = f"http://127.0.0.1:{os.environ.get('WIDELOG_SERVICES_TOXIPROXY_PORT', '8474')}"


class Proxy:
    """One proxy: `listen` is the loopback port clients use instead of the service's."""

    def __init__(self, http: httpx.Client, name: str, listen: int) -> None:
        self._http = http
        self.name = name
        self.listen = listen

    def add(
        self, toxic: str, *, stream: str = "downstream", toxicity: float = 1.0, **attributes: int
    ) -> str:
        """Add a toxic of type `toxic`; returns its name (for `remove`)."""
        name = unique(toxic)
        body = {
            "name": name,
            "type": toxic,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        self._http.post(f"/proxies/{self.name}/toxics", json=body).raise_for_status()
        return name

    def remove(self, toxic: str) -> None:
        self._http.delete(f"/proxies/{self.name}/toxics/{toxic}").raise_for_status()

    @contextlib.contextmanager
    def toxic(self, toxic: str, *, stream: str = "downstream", **attributes: int) -> Iterator[None]:
        """The toxic for the block, always removed after it."""
        name = self.add(toxic, stream=stream, **attributes)
        try:
            yield
        finally:
            self.remove(name)

    def enabled(self, enabled: bool) -> None:
        """A disabled proxy closes its connections and refuses new ones: an outage."""
        body = {"enabled": enabled}
        self._http.post(f"/proxies/{self.name}", json=body).raise_for_status()


class Toxiproxy:
    """The server's proxies this test created; `close()` deletes them."""

    def __init__(self, api: str = API) -> None:
        self._http = httpx.Client(base_url=api, timeout=10)
        self._proxies: list[Proxy] = []

    def proxy(self, upstream: int, *, listen: int | None = None) -> Proxy:
        """A proxy to 127.0.0.1:`upstream`, listening on `listen` (default: a free port)."""
        port = listen or free_port()
        if listen is not None:
            self._free(f"127.0.0.1:{listen}")
        name = unique("proxy")
        body: dict[str, Any] = {
            "name": name,
            "listen": f"127.0.0.1:{port}",
            "upstream": f"127.0.0.1:{upstream}",
            "enabled": True,
        }
        self._http.post("/proxies", json=body).raise_for_status()
        proxy = Proxy(self._http, name, port)
        self._proxies.append(proxy)
        return proxy

    def _free(self, address: str) -> None:
        """Delete a proxy left on a fixed port by a run that did not end (its server lives on)."""
        proxies = self._http.get("/proxies").raise_for_status().json()
        for name, proxy in proxies.items():
            if proxy["listen"] == address:
                self._http.delete(f"/proxies/{name}").raise_for_status()

    def close(self) -> None:
        for proxy in self._proxies:
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete(f"/proxies/{proxy.name}")
        self._http.close()
