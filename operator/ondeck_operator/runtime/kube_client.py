"""`HttpKube`: the `KubeApi` of reconcile/kinds.py over aiohttp, with the credentials of a
kubeconfig or of the pod's ServiceAccount (runtime/credentials.py; kopf's login handler
gets the same ones, so both always agree). No watch (kopf does), no cache, no retry."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from ondeck_operator.api.constants import FIELD_MANAGER
from ondeck_operator.reconcile.kinds import (
    Kind,
    NotFoundError,
    TransientError,
    error_for,
    kind_of,
)
from ondeck_operator.runtime.credentials import Credentials

Obj = dict[str, Any]


# ------------------------------------------------------------------- aiohttp client

RequestHook = Callable[[str, int, float], None]
AUTH_REFRESH_SECONDS = 60.0


class HttpKube:
    """`KubeApi` over aiohttp. `on_request(verb, status, seconds)` is called after every
    call (status 0 when no reply came), which is how the operator counts and times API
    requests. At most `connections` requests are in flight at once (HTTP/1.1 keep-alive
    connections); more wait for a free one."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout: float = 30.0,
        on_request: RequestHook | None = None,
        connections: int = 64,
    ) -> None:
        self._credentials = credentials
        self._server = credentials.server.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._on_request = on_request or (lambda verb, status, seconds: None)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._auth_header: str | None = None
        self._auth_until = 0.0

    async def _auth(self) -> str | None:
        # A token file is re-read (an exec plugin re-run when its token is due) once a
        # minute: plenty for rotated tokens, which stay valid for an hour or more. Off the
        # event loop, as both touch the disk or spawn a process.
        now = time.monotonic()
        if self._auth_until <= now:
            self._auth_header = await asyncio.to_thread(self._credentials.auth.header)
            self._auth_until = now + AUTH_REFRESH_SECONDS
        return self._auth_header

    def _ssl(self) -> ssl.SSLContext | bool:
        creds = self._credentials
        if creds.insecure:
            return False
        context = ssl.create_default_context(cafile=creds.ca_path or None)
        if creds.cert_path:
            context.load_cert_chain(creds.cert_path, creds.key_path)
        return context

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
        verb: str,
    ) -> Obj | None:
        """One request; None for a 404 on GET, the decoded reply otherwise."""
        url = self._server + path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        auth = await self._auth()
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body, separators=(",", ":"))
        started = time.monotonic()
        try:
            async with self._client().request(method, url, data=data, headers=headers) as rsp:
                text = await rsp.text()
                status = rsp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._on_request(verb, 0, time.monotonic() - started)
            raise TransientError(0, type(exc).__name__, f"{method} {path}: {exc}") from exc
        self._on_request(verb, status, time.monotonic() - started)
        if status == 404 and method == "GET":
            return None
        if status >= 400:
            raise error_for(status, text)
        decoded: Obj = json.loads(text) if text else {}
        return decoded

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        return await self._call("GET", kind.path(namespace, name), verb="get")

    async def list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        not_older_than: str | None = None,
    ) -> list[Obj]:
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if not_older_than:
            # Served from the API server's watch cache once it is at least this new, instead
            # of a consistent read of every object of the kind in the namespace from etcd.
            params["resourceVersion"] = not_older_than
            params["resourceVersionMatch"] = "NotOlderThan"
        reply = await self._call("GET", kind.path(namespace), params=params, verb="list")
        items: list[Obj] = (reply or {}).get("items") or []
        for item in items:  # list items carry no apiVersion/kind
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    async def apply(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        meta = obj["metadata"]
        reply = await self._call(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
            verb="apply",
        )
        return reply or {}

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool:
        body: Obj = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._call("DELETE", kind.path(namespace, name), body=body, verb="delete")
        except NotFoundError:
            return False
        return True

    async def patch_status(self, kind: Kind, namespace: str | None, name: str, patch: Obj) -> Obj:
        reply = await self._call(
            "PATCH",
            kind.path(namespace, name, "status"),
            body=patch,
            content_type="application/merge-patch+json",
            verb="patch",
        )
        return reply or {}

    async def create(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        reply = await self._call(
            "POST",
            kind.path(obj["metadata"].get("namespace")),
            body=obj,
            verb="create",
        )
        return reply or {}
