"""``moeacc api-snapshot``: the signatures the adapters use, read from a library's wheel or source."""

from __future__ import annotations

import json
from pathlib import Path

import click

from harness.cli.common import console, fail


def adapter_uses(snapshot: str) -> list[tuple[str, str]]:
    """(module, qualname) of every ``LIB.attr`` use, over the adapters whose library names ``snapshot``."""
    from harness.apisnap import uses
    from harness.backends.libapi import adapter_modules
    out = []
    for path, libs in adapter_modules().items():
        names = {var for var, lib in libs.items() if snapshot in lib.snapshots}
        out += [(u.module, u.qualname or "") for u in uses(path, names)] if names else []
    return out


@click.command("api-snapshot")
@click.argument("snapshot")
@click.option("--source", required=True, type=click.Path(exists=True),
              help="the library's wheel (.whl) or source tree at the pinned version")
@click.option("--out", "out_dir", type=click.Path(), default=None, help="folder (default: tests/fixtures/api)")
def api_snapshot(snapshot, source, out_dir):
    """Write SNAPSHOT.json (e.g. vllm-0.33.0): the signature of every function, class and enum
    member the adapters use from that library, read with ast from SOURCE (nothing is imported)."""
    from harness.apisnap import extract
    from harness.backends.libapi import SNAPSHOT_DIR
    symbols = adapter_uses(snapshot)
    if not symbols:
        fail(f"no adapter declares the snapshot {snapshot!r}")
    package, _, version = snapshot.rpartition("-")
    doc = extract(Path(source), symbols, package, version)
    doc["source"] = Path(source).name
    missing = [k for k, d in doc["symbols"].items() if d["kind"] == "missing"]
    out = Path(out_dir) if out_dir else SNAPSHOT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{snapshot}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    console.print(f"{out / (snapshot + '.json')}: {len(doc['symbols'])} symbols"
                  + (f"; not found in the source: {', '.join(missing)}" if missing else ""), highlight=False)
