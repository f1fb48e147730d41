"""OCI images made of a tree's packages (tuoba.oci): the layout podman and containerd read."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tuoba import oci
from tuoba.errors import BuildError

IMAGE = oci.OciImage(
    "localhost/tuoba/busybox:latest", ("busybox-static",), (("/bin/sh", "busybox"),), ("/bin/sh",)
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A Debian tree with merged /usr: busybox-static lists /bin/busybox, found in usr/bin."""
    root = tmp_path / "tree"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/busybox").write_bytes(b"\x7fELF busybox")
    (root / "usr/bin/busybox").chmod(0o755)
    (root / "usr/share/doc").mkdir(parents=True)
    (root / "usr/share/doc/busybox-static").symlink_to("busybox")  # a dangling link, as dpkg left
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "busybox-static.list").write_text(
        "/.\n/bin\n/bin/busybox\n/usr\n/usr/share\n/usr/share/doc\n/usr/share/doc/busybox-static\n"
    )
    return root


def members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: (m, tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def test_layer_has_the_package_files_where_dpkg_listed_them(tree: Path) -> None:
    layer = members(oci.layer(tree, IMAGE))
    assert sorted(layer) == [
        "bin", "bin/busybox", "bin/sh", "usr", "usr/share", "usr/share/doc",
        "usr/share/doc/busybox-static",
    ]  # fmt: skip
    busybox, data = layer["bin/busybox"]
    assert busybox.isfile() and data == b"\x7fELF busybox" and busybox.mode == 0o755
    assert layer["bin"][0].isdir()  # a real directory in the layer, though a link in the tree
    assert layer["bin/sh"][0].issym() and layer["bin/sh"][0].linkname == "busybox"
    assert layer["usr/share/doc/busybox-static"][0].linkname == "busybox"
    assert {(m.uid, m.gid, m.mtime) for m, _ in layer.values()} == {(0, 0, 0)}


def test_archive_is_an_oci_layout_whose_digests_hold(tree: Path) -> None:
    files = members(oci.archive(tree, IMAGE, "arm64"))
    assert json.loads(files["oci-layout"][1]) == {"imageLayoutVersion": "1.0.0"}
    for name, (_, data) in files.items():
        if name.startswith("blobs/sha256/") and data:
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"][1])
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == IMAGE.name
    assert entry["annotations"]["io.containerd.image.name"] == IMAGE.name
    assert entry["platform"] == {"architecture": "arm64", "os": "linux"}

    def blob(digest: str) -> bytes:
        return files[f"blobs/sha256/{digest.removeprefix('sha256:')}"][1]

    manifest = json.loads(blob(entry["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    layer = blob(manifest["layers"][0]["digest"])
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert (config["architecture"], config["os"]) == ("arm64", "linux")


def test_archive_for_armhf_names_the_variant(tree: Path) -> None:
    index = json.loads(members(oci.archive(tree, IMAGE, "armhf"))["index.json"][1])
    assert index["manifests"][0]["platform"] == {"architecture": "arm", "os": "linux",
                                                 "variant": "v7"}  # fmt: skip


def test_archive_is_a_function_of_the_files(tree: Path) -> None:
    first = oci.archive(tree, IMAGE, "arm64")
    (tree / "usr/bin/busybox").touch()  # a newer time alone changes nothing
    assert oci.archive(tree, IMAGE, "arm64") == first
    (tree / "usr/bin/busybox").write_bytes(b"\x7fELF busybox 2")
    assert oci.archive(tree, IMAGE, "arm64") != first


def test_a_package_not_installed_is_refused(tree: Path) -> None:
    image = oci.OciImage("localhost/x:1", ("podman",))
    with pytest.raises(BuildError, match="no installed package 'podman'"):
        oci.layer(tree, image)


def test_multiarch_list_name_is_found(tree: Path) -> None:
    info = tree / "var/lib/dpkg/info"
    (info / "busybox-static.list").rename(info / "busybox-static:arm64.list")
    assert "bin/busybox" in members(oci.layer(tree, IMAGE))


def test_write_images_names_the_archive_after_the_reference(tree: Path) -> None:
    written = oci.write_images(tree, (IMAGE,), "arm64")
    assert written == ["usr/share/tuoba/oci/localhost-tuoba-busybox-latest.oci.tar"]
    assert (tree / written[0]).read_bytes() == oci.archive(tree, IMAGE, "arm64")


def test_a_parent_link_to_an_absolute_path_stays_in_the_tree(tree: Path) -> None:
    """usr/lib/esc -> /etc is /etc of the tree, never the host's."""
    (tree / "etc").mkdir()
    (tree / "etc/hostname").write_text("tree's own\n")
    (tree / "usr/lib").mkdir()
    (tree / "usr/lib/esc").symlink_to("/etc")
    assert oci.in_tree(tree, "/usr/lib/esc/hostname") == tree / "etc/hostname"
    assert oci.in_tree(tree, "/../../../etc/hostname") == tree / "etc/hostname"
    (tree / "var/lib/dpkg/info/busybox-static.list").write_text("/usr/lib/esc/hostname\n")
    layer = members(oci.layer(tree, oci.OciImage("localhost/x:1", ("busybox-static",))))
    assert layer["usr/lib/esc/hostname"][1] == b"tree's own\n"


def test_a_link_loop_is_an_error(tree: Path) -> None:
    (tree / "loop").symlink_to("loop")
    with pytest.raises(BuildError, match="too many symbolic links"):
        oci.in_tree(tree, "/loop/x")


def test_a_packages_own_link_to_a_directory_is_kept_as_a_link(tree: Path) -> None:
    (tree / "usr/share/busybox").mkdir()
    (tree / "usr/share/bb").symlink_to("busybox")
    lst = tree / "var/lib/dpkg/info/busybox-static.list"
    lst.write_text(lst.read_text() + "/usr/share/busybox\n/usr/share/bb\n")
    layer = members(oci.layer(tree, IMAGE))
    assert layer["usr/share/bb"][0].issym()
    assert layer["bin"][0].isdir()  # (other paths go through /bin: the package's directory)


@pytest.mark.parametrize(
    ("links", "said"),
    [
        ((("/bin/busybox", "sh"),), "the link /bin/busybox would replace a file"),
        ((("/bin", "usr/bin"),), "the link /bin is a directory other entries are in"),
    ],
    ids=["replaces-a-file", "is-a-parent"],
)
def test_links_that_clash_with_the_packages_are_refused(
    tree: Path, links: tuple[tuple[str, str], ...], said: str
) -> None:
    with pytest.raises(BuildError, match=said):
        oci.layer(tree, oci.OciImage("localhost/x:1", ("busybox-static",), links))
