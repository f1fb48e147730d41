"""A recipe's pinned wheels (wheels.yaml): read with every mistake located, fetched by real pip
from an index on loopback with the pinned hash required, kept in the cache by that hash, and
made into a venv for the image without running the image's Python."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FileServer, serve_files
from tuoba import venv as venvs
from tuoba.cache import Store
from tuoba.errors import BuildError, InputError
from tuoba.wheels import Venv, Wheel, fetch, load_host_wheels, load_venv

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def make_wheel(dest: Path, name: str = "tuoba_demo", version: str = "1.0") -> Path:
    """A pure-Python wheel with a module and a console script, as a build backend writes one."""
    path = dest / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"def main() -> None:\n    print('tuoba demo says 42')\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tuoba-test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": f"[console_scripts]\ntuoba-demo = {name}:main\n".encode(),
    }
    record = []
    for f, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{f},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(path, "w") as z:
        for f, data in files.items():
            z.writestr(f, data)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FileServer, Path]]:
    """A PEP 503 simple index on loopback serving one wheel; pip is pointed at it alone."""
    root = tmp_path / "index"
    (root / "simple" / "tuoba-demo").mkdir(parents=True)
    wheel = make_wheel(root / "simple" / "tuoba-demo")
    (root / "simple" / "tuoba-demo" / "index.html").write_text(
        f'<a href="{wheel.name}#sha256={sha(wheel)}">{wheel.name}</a>\n'
    )
    server = FileServer(root)
    with serve_files(server) as base:
        monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple/")
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
        monkeypatch.setenv("PIP_FIND_LINKS", "")
        monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
        yield server, wheel


def test_fetch_downloads_with_pip_and_keeps_the_wheel_by_its_hash(
    index: tuple[FileServer, Path], tmp_path: Path
) -> None:
    server, served = index
    wheel = Wheel(served.name, sha(served), where="wheels.yaml:3")
    store = Store(tmp_path / "cache")
    got = fetch(wheel, PY, store)
    assert got.name == served.name and got.read_bytes() == served.read_bytes()
    asked = len(server.requests)
    assert fetch(wheel, PY, store, offline=True) == got  # from the cache, nothing asked
    assert len(server.requests) == asked


def test_a_wheel_of_other_bytes_is_refused_and_nothing_kept(
    index: tuple[FileServer, Path], tmp_path: Path
) -> None:
    _, served = index
    wheel = Wheel(served.name, "0" * 64, where="recipes/x/wheels.yaml:7 -> wheels[0]")
    store = Store(tmp_path / "cache")
    said = r"pip could not download tuoba_demo-1\.0-py3-none-any\.whl \(recipes/x/wheels\.yaml:7"
    with pytest.raises(BuildError, match=said + r" -> wheels\[0\]\): ERROR") as e:
        fetch(wheel, PY, store)
    assert "serves other bytes" in (e.value.hint or "")
    assert store.get("source", "0" * 64) is None


def test_offline_without_the_wheel_in_the_cache_is_an_error(tmp_path: Path) -> None:
    wheel = Wheel("tuoba_demo-1.0-py3-none-any.whl", "1" * 64)
    with pytest.raises(BuildError, match=r"wheel tuoba_demo-1\.0-py3-none-any\.whl .* --offline"):
        fetch(wheel, PY, Store(tmp_path), offline=True)


def test_wheel_names_versions_and_architectures_come_from_the_file_name() -> None:
    tvm = Wheel("apache_tvm-0.27.0.post1-py3-none-manylinux_2_27_aarch64.manylinux_2_28_aarch64"
                ".whl", "a" * 64)  # fmt: skip
    assert (tvm.name, tvm.version, tvm.arches, tvm.abis) == (
        "apache-tvm", "0.27.0.post1", ("arm64",), ("none",))  # fmt: skip
    assert Wheel("mpmath-1.3.0-py3-none-any.whl", "a" * 64).arches == ()
    x86 = Wheel("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "c" * 64)
    py = Venv("/opt/x", "3.11", (tvm, Wheel("mpmath-1.3.0-py3-none-any.whl", "b" * 64), x86),
              where="recipes/ai/wheels.yaml")  # fmt: skip
    assert [w.name for w in py.for_arch("amd64").wheels] == ["mpmath", "numpy"]
    assert [w.name for w in py.for_arch("arm64").wheels] == ["apache-tvm", "mpmath"]
    py.check_arch("arm64", "ai")
    with pytest.raises(InputError, match=r"wheels.yaml: recipe 'ai' pins wheels built for amd64, "
                       r"arm64 only, and this board is armhf"):  # fmt: skip
        py.for_arch("armhf").check_arch("armhf", "ai")


GOOD = """\
venv: /opt/tuoba/demo
python: "3.11"
wheels:
  - file: mpmath-1.3.0-py3-none-any.whl
    sha256: a0b2b9fe80bbcd81a6647ff13108738cfb482d481d826cc0e02f5b35e5c88d2c
    origin: PyPI
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("mpmath-1.3.0-py3-none-any.whl", "mpmath.tar.gz"),
         r"wheels.yaml:4 -> wheels\[0\] -> file: 'mpmath.tar.gz' is not a wheel's file name"),
        (GOOD.replace("a0b2b9fe", "A0B2B9FE"),
         r"wheels.yaml:5 -> wheels\[0\] -> sha256: '.*' is not a sha256"),
        (GOOD.replace("/opt/tuoba/demo", "opt/demo"),
         r"wheels.yaml:1 -> venv: 'opt/demo' is no place for a venv"),
        (GOOD.replace('"3.11"', "3"), r"wheels.yaml:2 -> python: .*"),
        (GOOD + GOOD.split("wheels:\n")[1].replace("a0b2", "ffff"),
         r"wheels.yaml:7 -> wheels\[1\] -> file: mpmath is pinned twice"),
    ],
    ids=["not-a-wheel", "bad-sha256", "relative-venv", "bad-python", "pinned-twice"],
)  # fmt: skip
def test_mistakes_in_wheels_yaml_are_located(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "wheels.yaml").write_text(text)
    with pytest.raises(InputError, match=message):
        load_venv(tmp_path, "recipes/demo")


def test_the_venv_is_made_for_the_image_without_running_its_python(tmp_path: Path) -> None:
    wheel_file = make_wheel(tmp_path)
    wheel = Wheel(wheel_file.name, sha(wheel_file))
    venv = Venv("/opt/tuoba/demo", PY, (wheel,), where="recipes/demo/wheels.yaml")
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / f"usr/bin/python{PY}").symlink_to(sys.executable)  # (the image's interpreter)
    store = Store(tmp_path / "cache")
    tree = venvs.build_venv(venv, {wheel.file: wheel_file}, root, store, tmp_path / "log")
    home = tree / "opt/tuoba/demo"
    assert os.readlink(home / f"bin/python{PY}") == f"/usr/bin/python{PY}"
    assert os.readlink(home / "bin/python3") == f"python{PY}"
    assert "include-system-site-packages = false" in (home / "pyvenv.cfg").read_text()
    script = (home / "bin/tuoba-demo").read_text()
    assert script.startswith(f"#!/opt/tuoba/demo/bin/python{PY}\n")  # as the image sees it
    site = home / f"lib/python{PY}/site-packages"
    assert (site / "tuoba_demo/__init__.py").is_file()
    assert (site / "tuoba_demo-1.0.dist-info/INSTALLER").read_text() == "tuoba\n"
    (pyc,) = (site / "tuoba_demo/__pycache__").glob("*.pyc")  # byte-compiled, hash-checked
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") & 1  # (PEP 552: hash-based)
    # the venv works once in place (here: the host's interpreter at the image's path)
    out = subprocess.run([sys.executable, "-c", "import tuoba_demo; tuoba_demo.main()"],
                         env={"PYTHONPATH": str(site)}, capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout == "tuoba demo says 42\n"
    again = venvs.build_venv(venv, {wheel.file: wheel_file}, root, store, tmp_path / "log")
    assert again == tree  # reused from the cache


def test_a_venv_for_another_python_than_the_image_has_is_refused(tmp_path: Path) -> None:
    venv = Venv("/opt/x", "3.99", (), where="recipes/demo/wheels.yaml:1")
    (tmp_path / "root/usr/bin").mkdir(parents=True)
    with pytest.raises(InputError, match=r"wheels.yaml:1: the venv is for Python 3.99, and the "
                       r"image has no /usr/bin/python3.99"):  # fmt: skip
        venvs.build_venv(venv, {}, tmp_path / "root", Store(tmp_path / "c"), tmp_path / "log")


def test_the_ai_recipes_host_wheels_are_for_this_python_and_pin_each_once() -> None:
    """recipes/ai/host/wheels.yaml (what `tuoba ai run-remote` runs on the build host): read
    like a venv's, without a place; the same TVM as the image's."""
    root = Path(__file__).resolve().parents[2]
    host = load_host_wheels(root / "recipes/ai/host/wheels.yaml", "recipes/ai/host/wheels.yaml")
    image = load_venv(root / "recipes/ai", "recipes/ai")
    assert host.python == image.python and host.arches == ("amd64",)
    versions = {w.name: w.version for w in host.wheels}
    assert versions["apache-tvm"] == {w.name: w.version for w in image.wheels}["apache-tvm"]
    assert {"onnx", "numpy", "apache-tvm-ffi"} <= set(versions)
