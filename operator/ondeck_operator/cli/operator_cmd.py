"""`ondeck operator`: run the operator (kopf's runner with ondeck's settings).

Every flag also reads `ONDECK_<FLAG>` from the environment (`--resync-seconds` →
`ONDECK_RESYNC_SECONDS`; the Helm chart sets these). Bad settings exit with status 2 and
one line `ErrorType: message`; nothing is parsed at import time, and kopf is imported only
when the command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ondeck_operator.api.operator_config import ConfigError, OperatorConfig
from ondeck_operator.runtime.settings import LogFormat, LogLevel, OperatorSettings, env_var


def _opt(flag: str, help: str, *, env: str | None = None, **kwargs: Any) -> Any:
    return typer.Option(flag, help=help, envvar=env or env_var(flag), **kwargs)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _setup_logging(level: LogLevel, fmt: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == LogFormat.JSON:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.value.upper()))
    if level != LogLevel.DEBUG:
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _settings_errors(exc: ValidationError) -> str:
    """`--flag: problem` for each problem (the flag a setting comes from)."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"--{loc[0].replace('_', '-')}: {message}" if loc else message)
    return "; ".join(lines)


def _port(value: int) -> int | None:
    return value or None


def operator(
    namespaces: Annotated[
        str,
        _opt("--namespaces", "Comma-separated namespaces to watch; empty: every namespace."),
    ] = "",
    kubeconfig: Annotated[
        Path | None,
        _opt(
            "--kubeconfig", "Kubeconfig; default: in-cluster, else $KUBECONFIG.", env="KUBECONFIG"
        ),
    ] = None,
    context: Annotated[str | None, _opt("--context", "Kubeconfig context.")] = None,
    config: Annotated[
        Path | None, _opt("--config", "OperatorConfig YAML (defaults of rendered objects).")
    ] = None,
    server_image: Annotated[
        str | None, _opt("--server-image", "Default ondeck-server image.")
    ] = None,
    artifact_storage_class: Annotated[
        str | None, _opt("--artifact-storage-class", "Default StorageClass of artifact claims.")
    ] = None,
    resync_seconds: Annotated[
        float, _opt("--resync-seconds", "Reconcile every ModelDeployment at least this often.")
    ] = 300.0,
    watch_server_timeout: Annotated[
        int, _opt("--watch-server-timeout", "timeoutSeconds of each watch request.")
    ] = 300,
    watch_client_timeout: Annotated[
        float, _opt("--watch-client-timeout", "Client-side cap of each watch request.")
    ] = 330.0,
    watch_inactivity_timeout: Annotated[
        float, _opt("--watch-inactivity-timeout", "Reconnect a watch silent this long.")
    ] = 120.0,
    request_timeout: Annotated[
        float, _opt("--request-timeout", "Timeout of other API requests (seconds).")
    ] = 30.0,
    workers: Annotated[int, _opt("--workers", "Concurrent reconciles.")] = 64,
    max_connections: Annotated[
        int, _opt("--max-connections", "API requests of the reconciler in flight at once.")
    ] = 64,
    write_wait_seconds: Annotated[
        float,
        _opt("--write-wait-seconds", "Wait this long for a child write, then go on without it."),
    ] = 1.0,
    list_chunk_size: Annotated[
        int, _opt("--list-chunk-size", "Objects per page of each watch's initial list.")
    ] = 500,
    retry_min_seconds: Annotated[
        float, _opt("--retry-min-seconds", "First retry delay after a failure.")
    ] = 1.0,
    retry_max_seconds: Annotated[float, _opt("--retry-max-seconds", "Longest retry delay.")] = 60.0,
    peering: Annotated[
        str, _opt("--peering", "KopfPeering name for HA (one active replica); empty: standalone.")
    ] = "",
    priority: Annotated[
        int | None, _opt("--priority", "Peering priority; default: random.")
    ] = None,
    peering_lifetime: Annotated[
        int, _opt("--peering-lifetime", "Seconds before a silent peer counts as gone.")
    ] = 60,
    pod_name: Annotated[
        str | None, _opt("--pod-name", "Peering identity; default: host-pid-random.")
    ] = None,
    health_port: Annotated[
        int, _opt("--health-port", "Port of /healthz and /readyz; 0 turns them off.")
    ] = 8080,
    metrics_port: Annotated[
        int, _opt("--metrics-port", "Port of the Prometheus /metrics; 0 turns it off.")
    ] = 9090,
    bind: Annotated[str, _opt("--bind", "Address of the health and metrics ports.")] = "0.0.0.0",
    log_level: Annotated[LogLevel, _opt("--log-level", "Log verbosity.")] = LogLevel.INFO,
    log_format: Annotated[LogFormat, _opt("--log-format", "text or json.")] = LogFormat.TEXT,
) -> None:
    """Run the ModelDeployment operator against the cluster of the current kubeconfig
    (or in-cluster): convert, deploy and keep every ModelDeployment converged."""
    try:
        if kubeconfig is not None and not kubeconfig.is_file():
            raise ConfigError(f"kubeconfig {kubeconfig} does not exist")
        base = OperatorConfig.from_file(config) if config else OperatorConfig()
        overrides = {
            k: v
            for k, v in (
                ("server_image", server_image),
                ("artifact_storage_class", artifact_storage_class),
            )
            if v
        }
        settings = OperatorSettings(
            namespaces=tuple(n.strip() for n in namespaces.split(",") if n.strip()),
            kubeconfig=kubeconfig,
            context=context,
            config=base.model_copy(update=overrides) if overrides else base,
            resync_seconds=resync_seconds,
            watch_server_timeout=watch_server_timeout,
            watch_client_timeout=watch_client_timeout,
            watch_inactivity_timeout=watch_inactivity_timeout,
            request_timeout=request_timeout,
            workers=workers,
            max_connections=max_connections,
            write_wait_seconds=write_wait_seconds,
            list_chunk_size=list_chunk_size,
            retry_min_seconds=retry_min_seconds,
            retry_max_seconds=retry_max_seconds,
            peering=peering or None,
            priority=priority,
            peering_lifetime=peering_lifetime,
            identity=pod_name or None,
            health_host=bind,
            health_port=_port(health_port),
            metrics_host=bind,
            metrics_port=_port(metrics_port),
            log_level=log_level,
            log_format=log_format,
        )
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        print(f"SettingsError: {_settings_errors(exc)}", file=sys.stderr)
        raise typer.Exit(2) from None

    _setup_logging(settings.log_level, settings.log_format)
    # kopf imports the `kubernetes` package's generated client (~26 MiB resident) whenever
    # it is importable, only to recognise that client's objects; the operator never hands
    # kopf any (its credentials come from runtime/credentials.py), so it is not loaded.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from ondeck_operator.runtime import handlers
    from ondeck_operator.runtime.credentials import CredentialsError, load_credentials

    try:
        load_credentials(settings.kubeconfig, settings.context)
    except CredentialsError as exc:
        print(f"CredentialsError: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(handlers.run(settings))


def register(app: typer.Typer) -> None:
    app.command("operator")(operator)
