from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.server
import json
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.schedule import JustInTime, Timeline
from tuoba.plan import Request

ROOT = Path(__file__).resolve().parents[1]
DATA_PARTS = (
    "boards", "recipes", "kernel", "overlays", "host", "userland", "release", "tests/image", "bpf",
    "SConstruct",
)  # fmt: skip


# `./dev test` runs the suite on two pytest-xdist workers, a module at a time each (--dist
# loadfile, in collection order): the integration modules go first, longest first, so the one
# that takes longest (the developer image's) starts at once and the other worker takes the
# rest beside it, then the quick tier. zynq's comes second: with a cold cache it builds the
# armhf kernel and root while the first module builds the arm64 ones, which rpi's would wait for.
FIRST = (
    "test_qemu_aarch64.py", "test_zynq_board.py", "test_rpi.py", "test_ai.py",
    "test_qemu_aarch64_stage2.py", "test_rebuilds.py",
    "test_uboot_board.py", "test_vendor_boot_boards.py", "test_flash.py",
    "test_download_page.py", "test_recipe_sources.py", "test_fr_without_the_hook.py",
)  # fmt: skip


# (a worker takes the next module when it has run out: tests/schedule.py)
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> JustInTime | None:
    return JustInTime(config, log) if config.getvalue("dist") == "loadfile" else None


TIMELINE = Timeline()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    TIMELINE.add(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not hasattr(terminalreporter.config, "workerinput"):  # (the controller, or no xdist)
        TIMELINE.report(terminalreporter.write, ROOT / "out" / "test-artifacts" / "timeline.json")


# ... and the joined release's module last: it waits for the modules that add to it (below)
LAST = ("test_joined_release.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    rank.update({name: 1000 + i for i, name in enumerate(LAST)})
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # (stable: file order kept)


def plan_request(project: Path, **kw: object) -> Request:
    """A build request for resolving plans in tests: qemu-aarch64, stage 1, recipe base, a
    mirror that is never contacted; `kw` replaces any field."""
    base = dict(
        board="qemu-aarch64",
        recipes=("base",),
        stage=1,
        data_dir=str(project),
        out_dir=str(project / "out"),
        cache_dir=str(project / "cache"),
        mirror="http://127.0.0.1:9/debian",
    )
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def copy_project(dest: Path) -> Path:
    """A private copy of the project's data, so a test can edit boards/recipes/overlays."""
    for part in DATA_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(
                src, dest / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    return dest


def base_only(project: Path, board: str = "qemu-aarch64") -> Path:
    """The board in a project copy without its default stack: its images are `base` alone.
    What a test proves of building (caching, rebuilds, sources, interruptions) is one code
    path whatever the recipes; a base image is rebuilt in seconds, the developer image in
    minutes."""
    path = project / "boards" / board / "board.yaml"
    shipped = path.read_text()
    assert "\nrecipes: [tuoba]\n" in shipped, f"{path}: its default recipes changed"
    path.write_text(shipped.replace("\nrecipes: [tuoba]\n", "\nrecipes: []\n"))
    return project


def zynq_boot_image(dest: Path) -> Path:
    """A Zynq-7000 boot image (the boot ROM's BOOT.BIN format) made by U-Boot's
    `mkimage -T zynqimage` around a placeholder first-stage loader: a valid boot header for the
    builds that need one supplied, not a loader for any real board."""
    payload = dest.with_name(dest.name + ".payload")
    payload.write_bytes(b"TUOBA-TEST-FSBL\n" * 256)
    subprocess.run(
        ["mkimage", "-T", "zynqimage", "-d", str(payload), str(dest)],
        capture_output=True, check=True,
    )  # fmt: skip
    return dest


def tuoba_build(project: Path, board: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`tuoba build --board BOARD` on a project copy, out in PROJECT/out, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tuoba", "--data-dir", str(project), "--out",
         str(project / "out"), "build", "--board", board, *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def tuoba_test(img: Path, board: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`tuoba test --board BOARD` on an image tuoba_build made (its project is two levels up)."""
    return subprocess.run(
        [sys.executable, "-m", "tuoba", "--data-dir", str(img.parents[1]), "--out",
         str(img.parent), "test", "--board", board, *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def partition_table(img: Path) -> dict[str, Any]:
    """The image's partition table as `sfdisk --json` reads it."""
    out = subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True)
    table: dict[str, Any] = json.loads(out.stdout)["partitiontable"]
    return table


def ext4_file(img: Path, start: int, path: str) -> bytes:
    """A file's bytes from the ext4 filesystem at byte `start` of the image (debugfs)."""
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{img}?offset={start}"], capture_output=True, check=True
    ).stdout


AML_BOOT_CODE = b"TUOBA-TEST-MBR-BOOT-CODE\n"


def amlogic_sd_fip(dest: Path, size: int = 1536 * 1024) -> Path:
    """A placeholder Amlogic u-boot.bin.sd.bin: a first sector with recognisable boot code, then
    BL2's 16-byte nonce and "@AML" header magic, then filler. It has the shape the vim3 build
    checks and places, not a loader any VIM3 would run."""
    first = (AML_BOOT_CODE * 17)[:440].ljust(512, b"\0")
    body = bytearray(hashlib.sha256(b"tuoba-test-fip").digest()[:16] + b"@AML")
    while len(body) < size - 512:
        body += hashlib.sha256(bytes(body[-32:])).digest()
    dest.write_bytes(first + bytes(body[: size - 512]))
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


def kernel_config(img: Path, manifest: dict[str, Any]) -> str:
    """The .config of the kernel an image was built with: the manifest names it only by its
    cache key (it carries no host paths); the build's own record knows its cache entry."""
    record = img.parent / ".build" / f"{manifest['board']}-s{manifest['stage']}" / "kernel.json"
    data = Path(json.loads(record.read_text())["dir"])  # CACHE/store/kernel/<key>/data
    assert data.parent.name == manifest["kernel"]["config_digest"]
    return (data / "config").read_text()


class FileServer:
    """A loopback HTTP server for a directory, with Range/If-Range (206) as web servers do,
    and faults on request: cut the first transfer of a file midway, or flip a byte of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cut_first: set[str] = set()
        self.tamper: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        self.statuses: list[tuple[str, int]] = []  # (name, HTTP status answered)
        self._etags: dict[tuple[Path, int, int, bool], str] = {}

    def etag(self, path: Path, tampered: bool = False) -> str:
        """The strong validator served for the file: its bytes' sha256 (as served: with the
        tampered byte), hashed once per state of the file."""
        st = path.stat()
        key = (path, st.st_size, st.st_mtime_ns, tampered)
        if key not in self._etags:
            h = hashlib.sha256()
            with path.open("rb") as f:
                pos = 0
                while chunk := bytearray(f.read(1 << 20)):
                    if tampered and pos <= st.st_size // 2 < pos + len(chunk):
                        chunk[st.st_size // 2 - pos] ^= 0xFF
                    h.update(chunk)
                    pos += len(chunk)
            self._etags[key] = f'"{h.hexdigest()[:16]}"'
        return self._etags[key]


@contextlib.contextmanager
def serve_files(server: FileServer) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            server.requests.append((name, self.headers.get("Range")))
            path = server.root / name.split("?")[0]
            if path.is_dir():  # (a directory's index page, as web servers do)
                path = path / "index.html"
            if not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            tampered = name in server.tamper
            etag = server.etag(path, tampered)
            start = 0
            rng = self.headers.get("Range")
            if rng and self.headers.get("If-Range") in (None, etag):
                start = int(rng.removeprefix("bytes=").split("-")[0])
            server.statuses.append((name, 206 if start else 200))
            self.send_response(206 if start else 200)
            self.send_header("ETag", etag)
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            # streamed a MiB at a time (released images are GiBs); a cut transfer ends after
            # half of what it would have sent, a tampered one has its middle byte flipped
            end = start + (size - start) // 2 if name in server.cut_first else size
            server.cut_first.discard(name)
            flip = size // 2 if tampered else -1
            with path.open("rb") as f:
                f.seek(start)
                pos = start
                while pos < end:
                    chunk = bytearray(f.read(min(1 << 20, end - pos)))
                    if pos <= flip < pos + len(chunk):
                        chunk[flip - pos] ^= 0xFF
                    self.wfile.write(chunk)
                    pos += len(chunk)
            if end < size:
                self.wfile.flush()
                self.connection.shutdown(2)  # the connection drops midway

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def keypair(path: Path) -> Path:
    """An unencrypted ed25519 key pair at PATH and PATH.pub; returns the private key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(path)],
                   check=True)  # fmt: skip
    return path


# The joined release: the modules that build a board's release image (PRODUCERS) each add it
# with `tuoba release --add` to one release directory the whole run shares (xdist workers
# included), then download their own image from it, flash and boot it; the last module,
# test_joined_release.py, waits for them and checks the release they made together: its
# signature, SBOMs, Imager catalog and download page (in Chromium).
PRODUCERS = ("test_qemu_aarch64.py", "test_qemu_aarch64_stage2.py", "test_rpi.py")
# where it would be published: Imager's catalog and the page need absolute addresses (.test
# never resolves); the tests serve it on loopback and map this prefix to their server
JOINED_BASE_URL = "https://downloads.tuoba.test/tuoba/0.1"


@dataclasses.dataclass(frozen=True)
class Joined:
    """The run's shared release directory and what its writers coordinate with."""

    root: Path  # public/ (served), key, trusted_signers, lock, done/

    @property
    def public(self) -> Path:
        return self.root / "public"

    @property
    def key(self) -> Path:
        return self.root / "release-key"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted_signers"

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """Adding to the release (exclusive) rewrites its catalog, sums and signature, which a
        download reading them (shared) must not see half-way."""
        with (self.root / "lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield


def _joined_root(factory: pytest.TempPathFactory) -> Path:
    """The joined release's directory: in the run's base directory, which every xdist worker's
    own (popen-gwN) is in."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return base.parent / f"joined-{os.environ['PYTEST_XDIST_TESTRUNUID'][:12]}"
    return base / "joined"


@pytest.fixture(scope="session")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Joined:
    base = _joined_root(tmp_path_factory)
    (base / "done").mkdir(parents=True, exist_ok=True)
    j = Joined(base)
    with j.locked():
        if not j.key.exists():
            keypair(j.key)
    return j


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A module that adds to the joined release says when it has ended — after its last test,
    whether that passed, failed or was skipped (xdist's workers run a module's tests in a row
    and know the next one)."""
    if item.path.name in PRODUCERS and (nextitem is None or nextitem.path != item.path):
        done = _joined_root(item.config._tmp_path_factory) / "done"  # type: ignore[attr-defined]
        done.mkdir(parents=True, exist_ok=True)
        (done / item.path.name).touch()


@dataclasses.dataclass(frozen=True)
class Flashed:
    """What a user has after downloading a release and flashing it."""

    xz: Path  # the downloaded NAME.img.xz; its manifest and boot files are beside it
    card: Path  # the loop device it was flashed to
    key: Path  # the user's private key, whose public half the flash put in root's keys
    server: FileServer  # what the release's server was asked
    release: Path  # the release directory it came from


@contextlib.contextmanager
def flashed_release(
    project: Path, out: Path, board: str, stage: int, work: Path, card_size: int, joined: Joined
) -> Iterator[Flashed]:
    """The board's image from OUT as a user gets it: added to the run's joined release (signed;
    `tuoba release --add`), served on loopback, downloaded with the first transfer of its
    largest file cut midway (resumed) and the signature checked against the signer the user
    trusts, then flashed with the user's own ssh key to a loop device of `card_size` bytes (a
    sparse file), which is detached afterwards."""
    from tuoba.plan import image_name

    def tuoba(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "tuoba", "--data-dir", str(project),
                               *args], capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, f"tuoba {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    name = image_name(board, stage)
    public, dl = joined.public, work / "dl"
    with joined.locked():
        tuoba("--out", str(out), "release", str(public), "--add", "--sign-key", str(joined.key),
              "--board", board, "--stage", str(stage), "--base-url", JOINED_BASE_URL)  # fmt: skip
        if not joined.trusted.exists():  # (the user's copy, taken once, as users do)
            joined.trusted.write_text((public / "allowed_signers").read_text())
    server = FileServer(public)
    # the image's largest file is cut midway (stage 2's .img.xz is 2 MB: the downloader's 1 MiB
    # reads may keep nothing of its first half, and then it rightly starts over, not resumes)
    cut = max(public.glob(f"{name}.*"), key=lambda f: f.stat().st_size).name
    server.cut_first = {cut}
    with joined.locked(shared=True), serve_files(server) as base:
        tuoba("--out", str(dl), "download", "--board", board, "--stage", str(stage),
              "--catalog", f"{base}/catalog.json", "--allowed-signers",
              str(joined.trusted))  # fmt: skip
    cut_requests = [rng for n, rng in server.requests if n == cut]
    assert len(cut_requests) == 2 and cut_requests[1], f"the cut transfer of {cut} was resumed"
    backing = work / "card"
    with backing.open("wb") as f:
        f.truncate(card_size)
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    try:
        user_key = keypair(work / "user-key")
        flashed = tuoba("--out", str(dl), "flash", str(dl / f"{name}.img.xz"), "--device", dev,
                        "--yes", "--force", "--ssh-key", f"{user_key}.pub")  # fmt: skip
        assert "verified" in flashed.stdout + flashed.stderr, flashed.stderr
        yield Flashed(dl / f"{name}.img.xz", Path(dev), user_key, server, public)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")


# A loader built for the build host and run on its own kernel: root, and the kernel's BTF.
HOST_BTF = Path("/sys/kernel/btf/vmlinux")
host_bpf = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
    pytest.mark.skipif(not HOST_BTF.exists(), reason="the host kernel has no BTF to build against"),
]


def snoop_checks(h: str) -> set[str]:
    """The guest checks of bpf/snoop (recipes/bpf/checks/test_snoop.py), the same in both
    stages, as JUnit names them for host `h`."""
    bad = ("zero-duration", "zero-pid", "no-such-pid", "failed-without-opens", "pid-and-command")
    return {
        f"test_snoop_follows_a_command_and_its_children[{h}]",
        f"test_snoop_failed_keeps_only_the_failed_opens[{h}]",
        f"test_snoop_sees_every_process_without_a_command[{h}]",
        *(f"test_snoop_bad_arguments_are_one_sentence[{h}-{case}]" for case in bad),
    }


RAY = str(Path(sys.executable).with_name("ray"))


@contextlib.contextmanager
def ray_cluster(nodes: int = 2) -> Iterator[str]:
    """A Ray cluster on loopback, its address: a head node and `nodes - 1` more, one CPU each
    (one image at a time each), each `ray start --block` in a process group of its own, ended
    with what it started when the block ends (`ray stop` would end every Ray node here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="tuoba-ray-", dir="/tmp")  # (Ray's socket paths are short)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--object-store-memory", str(100 << 20), "--block"]  # fmt: skip
    started: list[subprocess.Popen[bytes]] = []

    def alive() -> int:
        r = subprocess.run([RAY, "status", "--address", address], capture_output=True,
                           text=True, env=env, check=False, timeout=120)  # fmt: skip
        return r.stdout.count(" node_") if r.returncode == 0 else 0

    def start(*args: str) -> None:
        started.append(subprocess.Popen([RAY, "start", *args, *common], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True))  # fmt: skip
        deadline = time.monotonic() + 300
        while alive() < len(started):
            assert started[-1].poll() is None, f"ray start {' '.join(args)} ended"
            assert time.monotonic() < deadline, f"the Ray cluster never had {len(started)} nodes"
            time.sleep(1)

    try:
        start("--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp,
              "--disable-usage-stats")  # fmt: skip
        for _ in range(nodes - 1):
            start("--address", address)
        yield address
    finally:
        for node in reversed(started):
            node.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
