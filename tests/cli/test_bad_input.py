"""Bad input, as a new user types it: one located sentence, a hint, exit 2, nothing written.
One test per case found by trying the landed tool (issue 12's table)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.test_cli import PUBLIC_KEY, invoke
from tuoba.errors import InputError

BOARD = "boards/rpi3/board.yaml"


def refused(project: Path, *args: str) -> str:
    """Run `tuoba build --board rpi3 --check ARGS` (--check: input that passes never starts a
    build here): it must refuse (exit 2) with 'error:' and 'hint:' lines and write nothing."""
    code, out = invoke(project, "build", "--board", "rpi3", "--check", *args)
    assert code == 2, out
    assert out.startswith("error: ") and "\nhint: " in out, out
    assert "Traceback" not in out
    assert not (project / "out").exists(), "a refused build wrote into out/"
    return " ".join(out.split())  # rich wraps long lines


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00g", bytes(range(256)) + os.urandom(144)],
    ids=["bom-and-nul", "random-bytes"],
)
def test_board_file_not_utf8(project: Path, content: bytes) -> None:
    (project / BOARD).write_bytes(content)
    said = refused(project)
    first_bad = next(i for i, b in enumerate(content) if b >= 0x80)
    line = content[:first_bad].count(b"\n") + 1
    assert f"error: {BOARD}:{line}: not UTF-8 text" in said


def test_board_file_nested_5000_levels(project: Path) -> None:
    (project / BOARD).write_text("description: " + "[" * 5000 + "]" * 5000 + "\n")
    said = refused(project)
    assert f"error: {BOARD}:1: nested deeper than 32 levels" in said


@pytest.mark.timeout(20)  # the bomb expanded for minutes before; a hang fails here
def test_yaml_alias_bomb(project: Path) -> None:
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    board = project / BOARD
    board.write_text("\n".join(bomb) + "\n" + board.read_text())
    said = refused(project)
    assert f"error: {BOARD}:1: YAML anchors (&name) are not allowed here" in said


def test_yaml_alias_alone(project: Path) -> None:
    board = project / BOARD
    board.write_text(board.read_text().replace("soc: BCM2837", "soc: *somewhere"))
    assert "YAML aliases (*name) are not allowed here" in refused(project)


def test_duplicate_key(project: Path) -> None:
    board = project / BOARD
    text = board.read_text()
    board.write_text(text.replace("soc: BCM2837\n", "soc: BCM2837\nsoc: BCM2711\n"))
    line = text.splitlines().index("soc: BCM2837") + 2
    assert f"error: {BOARD}:{line}: key 'soc' given twice in one mapping" in refused(project)


def test_file_too_large(project: Path) -> None:
    board = project / BOARD
    board.write_text(board.read_text() + "#" * (1 << 20) + "\n")
    assert "too large for a data file" in refused(project)


def test_boot_partition_larger_than_the_image(project: Path) -> None:
    board = project / BOARD
    text = board.read_text()
    board.write_text(text.replace("size: 256M", "size: 4G"))
    line = text.splitlines().index("      size: 256M") + 1
    said = refused(project)
    assert (
        f"error: {BOARD}:{line} -> image -> partitions[0] -> size: partition 'boot' (4096 MiB "
        "from MiB 1) does not fit in the 2048 MiB image" in said
    )


def test_root_partition_left_too_small(project: Path) -> None:
    board = project / BOARD
    board.write_text(board.read_text().replace("size: 256M", "size: 2000M"))
    said = refused(project)
    assert "partition 'root' gets the 46 MiB left; ext4 needs at least 64 MiB" in said


def test_image_size_that_makes_no_sense(project: Path) -> None:
    board = project / BOARD
    board.write_text(board.read_text().replace("size: 2G", "size: 5000T"))
    assert "is not a whole number of MiB from 64 MiB to 256 GiB" in refused(project)


@pytest.mark.parametrize("what", ["passwd", "private", "two-keys", "garbled"])
def test_ssh_key_that_is_not_a_public_key(project: Path, tmp_path: Path, what: str) -> None:
    key = tmp_path / "key"
    body = PUBLIC_KEY.split()[1]
    key.write_text(
        {
            "passwd": Path("/etc/passwd").read_text(),
            "private": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n"
            "-----END OPENSSH PRIVATE KEY-----\n",
            "two-keys": PUBLIC_KEY * 2,
            "garbled": f"ssh-ed25519 {body[:28]} x\n",  # the key's bytes cut short
        }[what]
    )
    said = refused(project, "--ssh-key", str(key))
    assert f"error: --ssh-key {key}: " in said
    expected = {
        "passwd": "not an OpenSSH public key (one line: TYPE BASE64 [comment])",
        "private": "is a private key",
        "two-keys": "not an OpenSSH public key",
        "garbled": "ssh-keygen does not accept it as a public key",
    }[what]
    assert expected in said


def test_ssh_keygen_complaint_is_quoted_in_the_error_not_printed_above_it(
    project: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key"
    key.write_text(f"ssh-ed25519 {PUBLIC_KEY.split()[1][:28]} x\n")
    said = refused(project, "--ssh-key", str(key))
    assert "ssh-keygen does not accept it as a public key (it says: " in said
    assert "is not a public key file" in said
    assert "is not a public key file" not in capfd.readouterr().err  # (ssh-keygen's own stderr)


def test_a_public_key_passes(project: Path, tmp_path: Path) -> None:
    key = tmp_path / "key.pub"
    key.write_text(PUBLIC_KEY)
    code, out = invoke(project, "build", "--board", "rpi3", "--ssh-key", str(key), "--check")
    assert code == 0, out
    assert "nothing built" in out


def test_global_options_after_the_command(project: Path, tmp_path: Path) -> None:
    """`tuoba build --board B --out DIR`, as people type it: the option is taken (here the
    unbuilt image is looked for in DIR), and --help lists it on the command."""
    out_dir = tmp_path / "elsewhere"
    code, out = invoke(project, "test", "--board", "qemu-aarch64", "--out", str(out_dir))
    assert code == 2
    assert f"no image at {out_dir}/" in " ".join(out.split())
    code, out = invoke(project, "build", "--help")
    assert "--out DIRECTORY" in out and "--cache-dir" in out and "--data-dir" in out
    code, out = invoke(project, "kernel", "config", "-v", "--board", "nope")
    assert code == 2 and "no board named 'nope'" in out  # typed after a subcommand: known
    with pytest.raises(InputError):  # --debug after the command: the traceback is wanted
        invoke(project, "kernel", "config", "--debug", "--board", "nope")
    with pytest.raises(InputError):  # and on the group itself, before its subcommand
        invoke(project, "kernel", "--debug", "config", "--board", "nope")
    code, out = invoke(project, "cache", "--cache-dir", str(tmp_path / "c"), "du")
    assert code == 0 and f"total in {tmp_path / 'c'}" in " ".join(out.split())


def test_check_validates_every_board_and_writes_nothing(project: Path) -> None:
    for board in ("qemu-aarch64", "rpi4", "rpi3", "roc-rk3328-cc", "jetson-nano"):
        code, out = invoke(project, "build", "--board", board, "--check")
        assert code == 0, out
    assert not (project / "out").exists()


# --- a recipe's sources.yaml ------------------------------------------------------------------

GOOD_ARTIFACT = {
    "url": "https://example.invalid/k3s-arm64",
    "sha256": "a" * 64,
    "origin": "the release's sha256sum-arm64.txt",
    "install": "/usr/local/bin/k3s",
    "mode": '"0755"',
}


def pinned_recipe(project: Path, name: str = "pinned", **changes: str) -> None:
    fields = {**GOOD_ARTIFACT, **changes}
    recipe = project / "recipes" / name
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text("description: pinned files (test)\n")
    (recipe / "sources.yaml").write_text(
        "artifacts:\n" + "".join(
            f"  {'-' if i == 0 else ' '} {k}: {v}\n"
            for i, (k, v) in enumerate(fields.items()) if v != "DROP"
        )
    )  # fmt: skip


def test_recipe_sources_pass(project: Path) -> None:
    pinned_recipe(project)
    code, out = invoke(project, "build", "--board", "rpi3", "--check", "--recipe", "pinned")
    assert code == 0, out


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"mode": "0755"}, ":6 -> artifacts[0] -> mode: mode 493 is a number, not an octal string"),
        ({"mode": '"rwx"'}, ":6 -> artifacts[0] -> mode: 'rwx' is not a file mode"),
        (
            {"install": "usr/bin/k3s"},
            ":5 -> artifacts[0] -> install: 'usr/bin/k3s' is not an absolute path",
        ),
        ({"install": "/usr/../etc/shadow"}, "-> install: '/usr/../etc/shadow' is not an absolute"),
        ({"sha256": "abc"}, ":3 -> artifacts[0] -> sha256: 'abc' is not a sha256"),
        ({"arch": "[riscv64]"}, "-> artifacts[0] -> arch[0]: unknown arch 'riscv64'"),
        ({"install": "DROP"}, "-> artifacts[0]: missing required key 'install'"),
        ({"size": "12"}, "-> artifacts[0] -> size: unknown key 'size'"),
    ],
    ids=["mode-unquoted", "mode-text", "relative", "dotdot", "sha", "arch", "no-install", "typo"],
)
def test_recipe_sources_refused(project: Path, change: dict[str, str], said: str) -> None:
    pinned_recipe(project, **change)
    got = refused(project, "--recipe", "pinned")
    assert "error: recipes/pinned/sources.yaml" in got and said in got, got


def test_two_recipes_installing_one_path(project: Path) -> None:
    pinned_recipe(project, "one")
    pinned_recipe(project, "two", url="https://example.invalid/other/k3s", sha256="b" * 64)
    got = refused(project, "--recipe", "one", "--recipe", "two")
    assert "error: recipes 'one' and 'two' both install /usr/local/bin/k3s" in got, got


def test_an_artifact_for_another_arch_is_left_out(project: Path) -> None:
    from tuoba.plan import Request, resolve

    pinned_recipe(project, arch="[armhf]")
    req = Request(board="rpi3", recipes=("base", "pinned"), stage=1, data_dir=str(project),
                  out_dir=str(project / "out"), cache_dir=str(project / "cache"),
                  mirror="http://mirror.invalid/debian", check_needs=False)  # fmt: skip
    assert resolve(req).artifacts == ()


def test_an_artifact_for_this_arch_is_kept(project: Path) -> None:
    from tuoba.plan import Request, resolve

    pinned_recipe(project, arch="[arm64]")
    req = Request(board="rpi3", recipes=("base", "pinned"), stage=1, data_dir=str(project),
                  out_dir=str(project / "out"), cache_dir=str(project / "cache"),
                  mirror="http://mirror.invalid/debian", check_needs=False)  # fmt: skip
    (artifact,) = resolve(req).artifacts
    assert (artifact.install, artifact.mode, artifact.source.name) == (
        "/usr/local/bin/k3s",
        0o755,
        "k3s-arm64",
    )
    assert artifact.stages == (1,)


def test_one_name_pinned_to_two_hashes(project: Path) -> None:
    pinned_recipe(project, "one")
    pinned_recipe(project, "two", install="/usr/bin/k3s", sha256="b" * 64)
    got = refused(project, "--recipe", "one", "--recipe", "two")
    assert "error: recipes 'one' and 'two' pin different files named k3s-arm64" in got, got


@pytest.mark.parametrize(
    ("stages", "said"),
    [("[3]", "-> stages[0]: 3 is not a stage"), ("[[1]]", "-> stages[0]: [1] is not a stage"),
     ("[]", "-> stages: expected a list of stages")],
    ids=["three", "nested", "empty"],
)  # fmt: skip
def test_artifact_stages_refused(project: Path, stages: str, said: str) -> None:
    pinned_recipe(project, stages=stages)
    got = refused(project, "--recipe", "pinned")
    assert said in got, got


# --- a recipe's OCI images --------------------------------------------------------------------


def oci_recipe(project: Path, image: str, packages: str = "[busybox-static]") -> None:
    recipe = project / "recipes" / "ociimg"
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text(
        f"description: an OCI image (test)\nstage1:\n  packages: {packages}\n  oci_images:\n{image}"
    )


GOOD_OCI = "    - name: localhost/tuoba/busybox:latest\n      packages: [busybox-static]\n"


def test_recipe_oci_image_passes(project: Path) -> None:
    oci_recipe(project, GOOD_OCI + "      links: {/bin/sh: busybox}\n      cmd: [/bin/sh]\n")
    code, out = invoke(project, "build", "--board", "rpi3", "--check", "--recipe", "ociimg")
    assert code == 0, out


@pytest.mark.parametrize(
    ("image", "packages", "said"),
    [
        (
            GOOD_OCI,
            "[podman]",
            ":6 -> stage1 -> oci_images[0] -> packages[0]: 'busybox-static' is not a package "
            "of this image",
        ),
        (
            "    - name: busybox\n      packages: [busybox-static]\n",
            "[busybox-static]",
            "-> oci_images[0] -> name: 'busybox' is not a full image reference",
        ),
        (
            "    - name: tuoba/busybox:latest\n      packages: [busybox-static]\n",
            "[busybox-static]",
            "-> name: 'tuoba/busybox:latest' is not a full image reference",
        ),
        (
            GOOD_OCI + "      links: {/bin/sh: ''}\n",
            "[busybox-static]",
            "-> oci_images[0] -> links -> /bin/sh: a link needs a target",
        ),
        (
            "    - name: localhost/a-b:1\n      packages: [busybox-static]\n"
            "    - name: localhost/a/b:1\n      packages: [busybox-static]\n",
            "[busybox-static]",
            "-> oci_images[1] -> name: image localhost/a/b:1 would be written to "
            "localhost-a-b-1.oci.tar, as is localhost/a-b:1",
        ),
        (
            GOOD_OCI + "      links: {bin/sh: busybox}\n",
            "[busybox-static]",
            "-> oci_images[0] -> links -> bin/sh: 'bin/sh' is not an absolute path",
        ),
        (
            "    - name: localhost/a:1\n      packages: []\n",
            "[busybox-static]",
            "-> oci_images[0] -> packages: an image needs at least one package",
        ),
        (
            GOOD_OCI + GOOD_OCI,
            "[busybox-static]",
            "-> oci_images[1] -> name: image localhost/tuoba/busybox:latest is made twice",
        ),
    ],
    ids=[
        "not-installed",
        "short-name",
        "no-registry",
        "empty-link",
        "same-archive",
        "relative-link",
        "no-packages",
        "twice",
    ],
)
def test_recipe_oci_image_refused(project: Path, image: str, packages: str, said: str) -> None:
    oci_recipe(project, image, packages)
    got = refused(project, "--recipe", "ociimg")
    assert "error: recipes/ociimg/recipe.yaml" in got and said in got, got


def test_recipe_oci_image_refused_in_stage2(project: Path) -> None:
    (project / "recipes" / "ociimg").mkdir()
    (project / "recipes" / "ociimg" / "recipe.yaml").write_text(
        f"description: x\nstage1: {{}}\nstage2:\n  oci_images:\n{GOOD_OCI}"
    )
    got = refused(project, "--recipe", "ociimg")
    assert "stage2 -> oci_images: unknown key 'oci_images'" in got, got


def test_an_imager_device_tag_that_is_not_one(project: Path) -> None:
    board = project / BOARD
    board.write_text(board.read_text().replace("imager_devices: [pi3-64bit]",
                                               "imager_devices: [raspberrypi3]"))  # fmt: skip
    got = refused(project)
    assert "-> imager_devices[0]: 'raspberrypi3' is not a Raspberry Pi Imager device tag" in got


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--check-reproducible", "--reuse", "kernal"),
         "error: --reuse kernal: not a kind of cache entry a build makes hint: one of: kernel,"),
        (("--reuse", "kernel"),
         "error: --reuse only has a meaning with --check-reproducible hint: add"),
    ],
    ids=["unknown-kind", "without-the-check"],
)  # fmt: skip
def test_reuse_refused(project: Path, args: tuple[str, ...], said: str) -> None:
    assert said in refused(project, *args)


def test_source_date_epoch_that_is_not_a_time(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    said = refused(project)
    assert "error: SOURCE_DATE_EPOCH='yesterday' in the environment is not a number" in said


@pytest.mark.parametrize(
    ("ports", "said"),
    [
        ("[22]", "stage1 -> ports[0]: 22 is not a TCP port a recipe's service can claim"),
        ("[70000]", "stage1 -> ports[0]: 70000 is not a TCP port"),
        ("[http]", "stage1 -> ports[0]: expected a whole number"),
    ],
    ids=["ssh", "too-large", "a-name"],
)  # fmt: skip
def test_recipe_ports_refused(project: Path, ports: str, said: str) -> None:
    (project / "recipes" / "served").mkdir()
    (project / "recipes" / "served" / "recipe.yaml").write_text(
        f"description: a service (test)\nstage1:\n  ports: {ports}\n"
    )
    got = refused(project, "--recipe", "served")
    assert "error: recipes/served/recipe.yaml:3 -> " + said in got, got


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("no-such.onnx", "--rpc", "127.0.0.1:9"), "error: no model at "),
        (("m.onnx", "--rpc", "h:http"), "error: --rpc h:http: expected HOST[:PORT]"),
        (("m.onnx", "--input", "x.npy"), "error: --input x.npy: expected NAME=FILE.npy"),
        (("m.onnx",), "error: no image at "),
    ],
    ids=["no-model", "port-not-a-number", "input-without-a-name", "no-image"],
)  # fmt: skip
def test_ai_run_remote_refused_before_any_work(
    project: Path, args: tuple[str, ...], said: str
) -> None:
    """Mistakes `tuoba ai run-remote` sees before fetching TVM or booting anything."""
    (project / "m.onnx").write_bytes(b"not looked at")
    code, out = invoke(project, "ai", "run-remote", *args)
    assert code == 2 and "\nhint: " in out and "Traceback" not in out, out
    assert " ".join(out.split()).startswith(said), out


def test_ai_run_remote_on_an_image_without_the_ai_recipe(project: Path) -> None:
    """An image built without `ai` runs no TVM RPC server: said before it is booted."""
    from tests.cli.test_release import NAME, fake_build

    fake_build(project / "out")  # (recipes: base)
    image = project / "out" / f"{NAME}.img"
    (project / "m.onnx").write_bytes(b"not looked at")
    code, out = invoke(project, "ai", "run-remote", "m.onnx", "--image", str(image))
    assert code == 2, out
    assert f"error: {image.name} was built without the ai recipe" in " ".join(out.split()), out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--stages", "1,3"), "error: --stages 1,3: 3 is not a stage"),
        (("--stages", "1,"), "error: --stages 1,: an empty item is not a stage"),
        (("--boards", "rpi4,rpi5"), "error: --boards: no board 'rpi5'"),
        (("--address", "127.0.0.1:6379"), "error: --address is the Ray cluster's: it needs "
                                           "--executor ray"),
        (("--boards", "pynq-z2", "--stages", "2"), "error: no image of the matrix can be built "
                                                    "here: pynq-z2-s2: stage 2 is not available "
                                                    "for armhf boards yet"),
    ],
    ids=["stage-3", "empty-stage", "unknown-board", "address-without-ray", "nothing-buildable"],
)  # fmt: skip
def test_matrix_refused_before_any_build(project: Path, args: tuple[str, ...], said: str) -> None:
    code, out = invoke(project, "matrix", *args)
    assert code == 2 and "\nhint: " in out and "Traceback" not in out, out
    assert " ".join(out.split()).startswith(said), out
    assert not (project / "out").exists(), "a refused matrix wrote into out/"
