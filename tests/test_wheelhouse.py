"""``bench/wheelhouse.py`` picks the locked packages an offline CUDA machine lacks, and its bitsandbytes wheel keeps
only the target's CUDA library and still installs. (The downloads themselves need the package index: not run here.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import pytest
from harness import REPO


@pytest.fixture(scope="module")
def wheelhouse():
    spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "bench" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_is_read_whole(wheelhouse):
    pins = wheelhouse.locked_pins()
    assert pins["torch"].startswith("2.") and pins["torch"].endswith("+cpu")
    assert {"transformers", "peft", "bitsandbytes", "jsonargparse", "datasets", "lightning"} <= set(pins)
    locked_lines = [line for line in (REPO / "requirements" / "cpu.lock").read_text().splitlines()
                    if "==" in line and not line.lstrip().startswith("#")]
    assert len(pins) == len(locked_lines)


def test_the_target_keeps_its_torch_and_its_compiled_libraries_and_gets_the_rest(wheelhouse):
    pins = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "pyarrow": "26.0.1", "transformers": "5.24.0",
            "peft": "0.21.2", "jsonargparse": "4.53.0", "pandas": "3.1.1", "wandb": "0.31.0", "tqdm": "4.70.1"}
    target = wheelhouse.target_versions(
        "torch==2.11.0\nnumpy==2.5.2\npyarrow\ntransformers==5.17.0\nPEFT==0.21.2\ntqdm\n"
        "# a comment\nsome_local @ file:///src\n")
    assert target["some-local"] is None and target["peft"] == "0.21.2"
    carry = wheelhouse.to_carry(pins, target, skip={"wandb"})
    assert carry == {
        "transformers": "5.24.0",  # another version there
        "jsonargparse": "4.53.0",  # missing there
        "pandas": "3.1.1",         # a compiled library it keeps only when it has one
        "tqdm": "4.70.1",          # there at an unknown version
    }


def test_the_bitsandbytes_wheel_keeps_the_cpu_and_target_cuda_libraries(wheelhouse, tmp_path):
    unpacked = tmp_path / "src" / "bitsandbytes-0.50.2"
    package, info = unpacked / "bitsandbytes", unpacked / "bitsandbytes-0.50.2.dist-info"
    package.mkdir(parents=True)
    info.mkdir()
    (package / "__init__.py").write_text("LOADED = True\n")
    for suffix in ("cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm64"):
        (package / f"libbitsandbytes_{suffix}.so").write_bytes(b"\0" * 64)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                                "Tag: py3-none-manylinux_2_24_x86_64\n")
    (info / "RECORD").write_text("")
    out = tmp_path / "wheels"
    out.mkdir()
    subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(out), str(unpacked)], check=True,
                   capture_output=True)

    wheelhouse.prune_bitsandbytes(out, "13.0")

    (wheel,) = out.glob("bitsandbytes-*.whl")
    names = {n.split("/")[-1] for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")}
    assert names == {"libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so"}
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)  # its RECORD matches its files
    assert sorted(p.name for p in (site / "bitsandbytes").glob("*.so")) == sorted(names)

    with pytest.raises(SystemExit, match="no library for CUDA 11.0"):
        wheelhouse.prune_bitsandbytes(out, "11.0")
