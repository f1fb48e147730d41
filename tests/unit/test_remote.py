"""The remote build cache against a real S3 API server on loopback (moto's, as a thread of
this process; boto3 is the client): push after making, pull into an empty local cache,
verified; a damaged entry refused and replaced; an unreachable cache is one warning; two
pushers of one key; credentials never printed."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tuoba import remote, ui
from tuoba.cache import Store
from tuoba.errors import InputError

KEY = "ab" * 32
SECRET = "tuoba-test-secret-never-printed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tuoba-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = "tuoba-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}/team/cache"


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What tuoba prints (warnings and info), captured."""
    out = io.StringIO()
    # (rich's own attribute: restored to None, the console follows sys.stderr again; setting
    # `file` would pin whatever stream stood there)
    monkeypatch.setattr(ui.console, "_file", out)
    return out


def make(store: Store, text: str = "kernel bytes") -> None:
    with store.make("kernel", KEY, what="a kernel", inputs={"n": 1}) as data:
        (data / "Image").write_text(text)
        (data / "lib").mkdir()
        (data / "lib" / "mod.ko").write_bytes(b"\x7fELF" + bytes(1000))
        (data / "link").symlink_to("Image")


def store(root: Path, url: str) -> Store:
    return Store(root, label="qemu-aarch64-s1", remote=remote.RemoteCache.open(url))


def test_made_here_pulled_there(tmp_path: Path, bucket: str) -> None:
    a = store(tmp_path / "a", bucket)
    make(a)
    assert a.remote is not None and a.remote.pushed > 0  # type: ignore[attr-defined]
    b = store(tmp_path / "b", bucket)
    entry = b.get("kernel", KEY)
    assert entry is not None, "pulled from the remote cache"
    assert (entry.data / "Image").read_text() == "kernel bytes"
    assert (entry.data / "link").is_symlink() and (
        entry.data / "lib" / "mod.ko"
    ).stat().st_size == 1004
    assert entry.meta.what == "a kernel" and entry.meta.key == KEY
    assert (tmp_path / "b" / "store" / "kernel" / KEY / "data" / "Image").is_file()  # local now
    assert not list((tmp_path / "b" / "store" / "kernel").glob(".*")), "no work left"


def test_a_key_the_remote_lacks_is_a_miss(tmp_path: Path, bucket: str) -> None:
    assert store(tmp_path / "b", bucket).get("kernel", "cd" * 32) is None


def test_a_damaged_entry_is_refused_and_replaced(
    tmp_path: Path, bucket: str, said: io.StringIO
) -> None:
    make(store(tmp_path / "a", bucket))
    s3 = boto3.client("s3")
    name = bucket.removeprefix("s3://").split("/", 1)[0]
    tarball = next(o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]
                   if o["Key"].endswith(".tar.zst"))  # fmt: skip
    s3.put_object(Bucket=name, Key=tarball, Body=b"truncated")  # the upload went wrong
    b = store(tmp_path / "b", bucket)
    assert b.get("kernel", KEY) is None
    assert "refused: 9 bytes with sha256" in said.getvalue()
    make(b, "rebuilt here")  # the build makes it locally and pushes a good one over it
    entry = store(tmp_path / "c", bucket).get("kernel", KEY)
    assert entry is not None and (entry.data / "Image").read_text() == "rebuilt here"


def test_an_unreachable_cache_is_one_warning(
    tmp_path: Path, said: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s = store(tmp_path / "a", "s3://nowhere/cache")
    assert s.get("kernel", KEY) is None
    make(s)  # builds locally
    assert s.get("kernel", KEY) is not None
    assert said.getvalue().count("not reachable") == 1, said.getvalue()


def test_two_pushers_of_one_key_leave_a_valid_entry(tmp_path: Path, bucket: str) -> None:
    stores = [store(tmp_path / f"s{i}", bucket) for i in range(2)]
    threads = [threading.Thread(target=make, args=(s, f"from {i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entry = store(tmp_path / "c", bucket).get("kernel", KEY)
    assert entry is not None and (entry.data / "Image").read_text() in ("from 0", "from 1")


def test_credentials_are_never_printed(tmp_path: Path, bucket: str, said: io.StringIO) -> None:
    ui.set_verbosity(2)
    try:
        make(store(tmp_path / "a", bucket))
        store(tmp_path / "b", bucket).get("kernel", KEY)
    finally:
        ui.set_verbosity(0)
    assert "pushed" in said.getvalue() and "pulled" in said.getvalue()
    assert SECRET not in said.getvalue()


def test_remote_lists_its_entries(tmp_path: Path, bucket: str) -> None:
    make(store(tmp_path / "a", bucket))
    assert remote.RemoteCache.open(bucket).refs() == [f"kernel/{KEY}"]


def test_a_marker_naming_another_entry_is_refused(tmp_path: Path, bucket: str) -> None:
    make(store(tmp_path / "a", bucket))
    s3 = boto3.client("s3")
    name, prefix = bucket.removeprefix("s3://").split("/", 1)
    marker_key = f"{prefix}/v1/kernel/{KEY}/entry.json"
    marker = json.loads(s3.get_object(Bucket=name, Key=marker_key)["Body"].read())
    s3.put_object(Bucket=name, Key=f"{prefix}/v1/kernel/{'cd' * 32}/entry.json",
                  Body=json.dumps(marker).encode())  # fmt: skip
    assert store(tmp_path / "b", bucket).get("kernel", "cd" * 32) is None


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "bucket/prefix"])
def test_a_cache_url_of_another_kind_is_refused(url: str) -> None:
    with pytest.raises(InputError, match="not an s3://BUCKET/PREFIX or https:// cache URL"):
        remote.RemoteCache.open(url)


def test_logged_urls_lose_their_secrets() -> None:
    assert remote.safe_url("https://user:pw@mirror.example:8443/c?token=abc") == (
        "https://mirror.example:8443/c"
    )


def test_cache_push_list_and_pull_commands(project: Path, tmp_path: Path, bucket: str) -> None:
    from tests.cli.test_cli import invoke

    local = Store(tmp_path / "a")
    make(local)  # made before there was a remote cache: only `cache push` uploads it
    a = ("--cache-dir", str(tmp_path / "a"), "--cache-url", bucket)
    code, out = invoke(project, *a, "cache", "push")
    assert code == 0, out
    assert "1 entries checked" in out
    code, out = invoke(project, *a, "cache", "list", "--remote")
    assert code == 0 and f"kernel     {KEY}" in out and "a kernel" in out, out
    b = ("--cache-dir", str(tmp_path / "b"), "--cache-url", bucket)
    code, out = invoke(project, *b, "cache", "pull", f"kernel/{KEY}")
    assert code == 0, out
    assert (tmp_path / "b/store/kernel" / KEY / "data/Image").read_text() == "kernel bytes"
    code, out = invoke(project, *b, "cache", "pull", f"kernel/{'cd' * 32}")
    assert code == 2 and "the remote cache has no such entry" in " ".join(out.split()), out


def test_cache_commands_without_a_remote_say_how(project: Path) -> None:
    from tests.cli.test_cli import invoke

    code, out = invoke(project, "cache", "push")
    assert code == 2 and "no remote cache: pass --cache-url URL" in " ".join(out.split()), out


def test_cache_push_to_an_unreachable_remote_fails(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cli.test_cli import invoke

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    make(Store(tmp_path / "a"))
    code, out = invoke(project, "--cache-dir", str(tmp_path / "a"), "--cache-url",
                       "s3://nowhere/x", "cache", "push")  # fmt: skip
    assert code == 4 and "not reachable" in out and SECRET not in out, out
