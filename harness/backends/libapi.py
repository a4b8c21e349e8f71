"""A kernel library as an adapter sees it: the distribution, the version range the adapter was
written for, the API snapshot its calls are bound to, and lazy access to its functions.

Adapters reach every library object through :meth:`Library.attr` (``FI.attr("flashinfer.fused_moe",
"cutlass_fused_moe")``), so ``harness.apisnap`` can find each use statically and bind every call to
the library's own signature, read from its source at the pinned version (``tests/fixtures/api``):
a renamed function, a removed keyword or a new required argument fails on the CPU.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

SNAPSHOT_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "api"
FORCE_ENV = "MOEACC_FORCE_VERSIONS"   # set by `moeacc run --force`: run outside the written-for range


@dataclass(frozen=True)
class Library:
    dist: str                 # the distribution pip installs (flashinfer-python)
    module: str               # its import name (flashinfer)
    written_for: str          # PEP 440 range the adapter was written and checked for (">=0.33,<0.34")
    snapshots: tuple = ()     # API snapshot files (tests/fixtures/api/<name>.json) the calls are bound to
    source: str = ""          # where the pinned source was read (wheel, or repository@commit)

    def installed(self) -> str | None:
        """The version of ``dist`` if ``module`` is importable (``"unknown"`` without metadata), else None."""
        import sys
        loaded = sys.modules.get(self.module)
        try:
            if loaded is None and importlib.util.find_spec(self.module) is None:
                return None
        except (ImportError, ValueError):
            return None
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return getattr(loaded, "__version__", "unknown")

    def gate(self) -> str | None:
        """None if the library is importable in the range the adapter was written for, else why."""
        have = self.installed()
        if have is None:
            return f"{self.dist} not installed"
        if have == "unknown" or os.environ.get(FORCE_ENV) == "1":
            return None
        try:
            ok = Version(have) in SpecifierSet(self.written_for, prereleases=True)
        except InvalidVersion:
            return None
        return None if ok else f"written for {self.dist}{self.written_for}, found {have} (--force to run anyway)"

    def attr(self, module: str, qualname: str | None = None):
        """The library object ``module:qualname`` (the module itself without a qualname), imported now."""
        obj = importlib.import_module(module)
        for part in (qualname.split(".") if qualname else ()):
            obj = getattr(obj, part)
        return obj

    def snapshot_for(self, version: str | None = None) -> str | None:
        """The snapshot nearest the installed (or given) version: the one whose version matches, else the newest."""
        version = version or self.installed()
        match = [s for s in self.snapshots if version and s.endswith(f"-{version}")]
        return match[0] if match else (self.snapshots[-1] if self.snapshots else None)


def adapter_modules() -> dict[Path, dict[str, Library]]:
    """Each module under harness/backends (and the probes) with the Library objects it holds, by name."""
    import importlib
    pkg = Path(__file__).resolve().parent
    out = {}
    for path in sorted(pkg.rglob("*.py")) + sorted(pkg.parent.glob("probes*.py")) + sorted(pkg.parent.glob("probes/*.py")):
        parts = path.relative_to(pkg.parent).with_suffix("").parts
        mod = importlib.import_module(".".join(("harness",) + tuple(p for p in parts if p != "__init__")))
        libs = {k: v for k, v in vars(mod).items() if isinstance(v, Library)}
        if libs:
            out[path] = libs
    return out
