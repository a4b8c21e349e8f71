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


@click.command("build-flashinfer")
@click.option("--arch", default="9.0a", show_default=True, help="FLASHINFER_CUDA_ARCH_LIST to compile for")
@click.option("--jobs", type=int, default=None, help="parallel nvcc jobs (MAX_JOBS; default: FlashInfer's)")
@click.option("--verbose", is_flag=True, help="show the compiler's output")
def build_flashinfer(arch, jobs, verbose):
    """Build the trimmed SM90 fused-MoE module of the installed flashinfer-python here (nvcc and the CUDA
    headers, no GPU) into $MOEACC_CACHE_DIR, and print the .so's path: carry its folder to a GPU machine
    and point MOEACC_FLASHINFER_PREBUILT at it."""
    import importlib.util
    if importlib.util.find_spec("flashinfer") is None:
        fail("build-flashinfer: flashinfer-python is not installed (pip install flashinfer-python==0.7.2.post1 --no-deps, "
             "with apache-tvm-ffi)")
    from harness.backends.flashinfer.build import build
    try:
        so = build(arch, jobs, verbose)
    except Exception as err:  # noqa: BLE001 - a compiler or JIT error: one line, naming it
        fail(f"build-flashinfer: {_first_compiler_error(str(err)) or type(err).__name__ + ': ' + ' '.join(str(err).split())[:300]}")
    console.print(str(so), highlight=False)


def _first_compiler_error(log: str) -> str | None:
    """The first ``fatal error:`` / ``error:`` line of a compiler log (ninja's output holds every command
    line first), with its file name only: ``cudaUtils.h:19: fatal error: cublasLt.h: No such file or directory``."""
    import re
    m = re.search(r"(?:^|\s)(\S+?):(\d+):(?:\d+:)? (fatal error|error): (.+?)(?:\n|$)", log)
    return None if m is None else f"{Path(m.group(1)).name}:{m.group(2)}: {m.group(3)}: {m.group(4).strip()}"
