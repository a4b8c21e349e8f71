"""A trimmed FlashInfer module built against a libcuda stub without symbols links no libcuda.so.1 and dies
at its first driver call on the GPU (``symbol lookup error: ... undefined symbol: cuLibraryLoadData``, the
H200 run of 2026-12-05): the build and the prebuilt loader name it instead. Shared objects made here with gcc."""

import shutil
import subprocess

import pytest

from harness.backends.flashinfer import build as B

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("readelf")), reason="needs gcc and readelf")


def _so(tmp_path, name, stub_body):
    stub = tmp_path / f"stub-{name}"
    stub.mkdir()
    (stub / "s.c").write_text(stub_body)
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub / "libcuda.so"), str(stub / "s.c")], check=True)
    (tmp_path / "m.c").write_text("int cuLibraryLoadData(void);\nint f(void) { return cuLibraryLoadData(); }\n")
    out = tmp_path / name / f"{name}.so"
    out.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(tmp_path / "m.c"), "-Wl,--as-needed", f"-L{stub}", "-lcuda"],
                   check=True)
    return out


def test_empty_stub_is_named(tmp_path):
    so = _so(tmp_path, "mod", "")
    why = B.driver_link_problem(so)
    assert why is not None and "cuLibraryLoadData" in why and "libcuda.so.1" in why


def test_real_stub_passes(tmp_path):
    assert B.driver_link_problem(_so(tmp_path, "mod", "int cuLibraryLoadData(void) { return 0; }\n")) is None


def test_prebuilt_loader_raises_naming_the_file(tmp_path, monkeypatch):
    _so(tmp_path, "mod", "")
    monkeypatch.setenv("MOEACC_FLASHINFER_PREBUILT", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"MOEACC_FLASHINFER_PREBUILT: mod\.so calls the CUDA driver"):
        B.prebuilt_so("mod")
    assert B.prebuilt_so("absent") == tmp_path / "absent" / "absent.so"   # not built: FlashInfer builds it
