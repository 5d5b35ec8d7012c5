"""`ondeck ls`, `ondeck inspect`, `ondeck gc`: the local artifact store that `ondeck run`
converts into, read from its files (`<store>/<digest>/manifest.json`, `<store>/refs/*`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ondeck_operator import local
from ondeck_operator.local import store as artifacts

StoreOption = Annotated[
    Path,
    typer.Option(help="Local artifact store.", envvar="ONDECK_STORE"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _store(store: Path) -> Path:
    return store.expanduser()


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def ls_lines(store: Path, now: dt.datetime | None = None) -> list[str]:
    """The `ondeck ls` table (pure over the store's files; `now` for the AGE column)."""
    found = artifacts.artifacts(store)
    if not found:
        return [f"no artifacts in {store}; `ondeck run -f md.yaml` converts one into it"]
    rows = [["NAME", "DIGEST", "FORMAT", "QUANTIZE", "SIZE", "GATE", "AGE", "SOURCE"]]
    for a in found:
        name = ",".join(a.names) or "(no name)"
        sizes = f"{local.size(a.original_size_bytes)} → {local.size(a.size_bytes)}"
        rows.append(
            [
                name,
                a.digest[:12],
                a.format,
                a.quantize,
                sizes,
                a.gate(),
                artifacts.age(a.created, now),
                a.source,
            ]
        )
    return _table(rows)


def ls(store: StoreOption = local.DEFAULT_STORE, as_json: JsonOption = False) -> None:
    """List the artifacts in the local store: model names, format, quantization, sizes,
    accuracy gate and age."""
    folder = _store(store)
    if as_json:
        typer.echo(json.dumps([_as_json(a) for a in artifacts.artifacts(folder)], indent=2))
        return
    for line in ls_lines(folder):
        typer.echo(line)


def _as_json(a: artifacts.Artifact) -> dict[str, Any]:
    return {
        "digest": a.digest,
        "path": str(a.path),
        "refs": list(a.refs),
        "names": a.names,
        "bytesOnDisk": a.bytes_on_disk,
        "manifest": a.manifest,
    }


def inspect_lines(a: artifacts.Artifact, now: dt.datetime | None = None) -> list[str]:
    """What `ondeck inspect` prints about one artifact."""
    m = a.manifest
    source = m.get("source") or {}
    settings = m.get("settings") or {}
    v = m.get("validation") or {}

    def tensors(key: str) -> str:
        return ", ".join(
            f"{t.get('name')} {t.get('datatype')} {t.get('shape')}" for t in m.get(key) or []
        )

    sha = str(source.get("sha256") or "")
    lines = [
        ("names", ", ".join(a.names) or "(none: `ondeck gc` removes it)"),
        ("digest", a.digest),
        ("path", str(a.path)),
        ("refs", ", ".join(a.refs) or "(none)"),
        (
            "source",
            f"{a.source} ({a.format}"
            + (f", sha256 {sha[:12]}…" if sha else "")
            + (
                f", {local.size(int(source['sizeBytes']))}"
                if source.get("sizeBytes") is not None
                else ""
            )
            + ")",
        ),
        (
            "created",
            f"{a.created:%Y-%m-%d %H:%M:%S} UTC ({artifacts.age(a.created, now)} ago)"
            if a.created
            else "?",
        ),
        ("inputs", tensors("inputs")),
        ("outputs", tensors("outputs")),
        (
            "size",
            f"{local.size(a.original_size_bytes)} → {local.size(a.size_bytes)} (ONNX before → "
            f"after optimization), {local.size(a.bytes_on_disk)} on disk",
        ),
        ("settings", f"level {settings.get('level', '?')}, quantize {a.quantize}"),
        ("gate", _gate(v)),
        ("versions", ", ".join(f"{k} {val}" for k, val in (m.get("versions") or {}).items())),
    ]
    return [f"{k + ':':<10}{val}" for k, val in lines]


def _gate(v: dict[str, Any]) -> str:
    if not v:
        return "-"
    parts = []
    if v.get("cosine") is not None:
        parts.append(f"cosine {float(v['cosine']):.4f} (min {v.get('minCosine')})")
    if v.get("top1Disagreement") is not None:
        parts.append(
            f"top-1 disagreement {float(v['top1Disagreement']):.2%} "
            f"(max {float(v.get('maxTop1Disagreement') or 0):.2%})"
        )
    verdict = "passed" if v.get("passed") else "FAILED"
    on = f" on {v.get('samples')} {v.get('sampleSource') or ''} samples".replace("  ", " ")
    ref = f" against {v['reference']}" if v.get("reference") else ""
    return f"{verdict}: " + ", ".join(parts) + on + ref


def inspect(
    name: Annotated[str, typer.Argument(help="A model name (ref) or a digest prefix.")],
    store: StoreOption = local.DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Show one artifact: source, inputs and outputs, sizes, settings, the accuracy gate."""
    try:
        found = artifacts.find(_store(store), name)
    except artifacts.NotFound as exc:
        typer.echo(f"NotFound: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(_as_json(found), indent=2))
        return
    for line in inspect_lines(found):
        typer.echo(line)


def gc_lines(plan: artifacts.GcPlan, *, dry_run: bool) -> list[str]:
    """What `ondeck gc` prints for a plan."""
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"{verb} {a.digest[:12]}  {a.source}  {local.size(a.bytes_on_disk)}" for a in plan.artifacts
    ]
    lines += [f"{verb} refs/{name} (points at no artifact)" for name in plan.dangling_refs]
    lines += [f"{verb} {p.name} (an unfinished conversion)" for p in plan.leftovers]
    lines += [
        f"kept {a.digest[:12]}: no name points at it, but it is younger than "
        f"{artifacts.GC_GRACE_S / 60:.0f} minutes"
        for a in plan.kept_young
    ]
    total = len(plan.artifacts) + len(plan.dangling_refs) + len(plan.leftovers)
    if total == 0:
        lines.append("nothing to remove: every artifact has a name")
    else:
        lines.append(f"{verb} {total} item(s), {local.size(plan.bytes())}")
    return lines


def gc(
    store: StoreOption = local.DEFAULT_STORE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Remove artifacts no model name points to, refs to nothing, and what interrupted
    conversions left behind."""
    folder = _store(store)
    if not folder.is_dir():
        typer.echo(f"nothing to remove: {folder} does not exist")
        return
    plan = artifacts.gc_plan(folder)
    if not dry_run:
        try:
            artifacts.gc(folder, plan)
        except OSError as exc:
            typer.echo(f"StoreFailed: cannot clean {folder} ({exc.strerror or exc})", err=True)
            raise typer.Exit(1) from None
    for line in gc_lines(plan, dry_run=dry_run):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command("inspect")(inspect)
    app.command("gc")(gc)
