"""Resolving a build request (board + recipes + stage) into one frozen, validated Plan.

Everything is checked here, before the first side effect: names, file formats, kernel features,
overlays, guest checks. The Plan is what every build step reads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuoba import __version__, apt, bpf, kbuild, run, sources, userland
from tuoba.board import Board, board_names, load_board
from tuoba.bootloader import Bootloader, check_supplied
from tuoba.cache import Mirror, Remote, Store
from tuoba.config import Doc
from tuoba.errors import InputError
from tuoba.kernel import Feature, feature_names, load_feature, load_fragment
from tuoba.oci import OciImage
from tuoba.recipe import Artifact, Recipe, Section, load_recipe, recipe_names
from tuoba.remote import RemoteCache, objects_for, safe_url
from tuoba.wheels import Venv

DEFAULT_BOARD = "qemu-aarch64"
IMAGE_CHECKS = "tests/image/"  # guest checks of every image (kernel, serial console)
DEFAULT_RECIPES = ("base",)
DEBIAN_RELEASE = "bookworm"


@dataclasses.dataclass(frozen=True)
class Request:
    """What the user asked for; plain values, so it can be written to JSON for SCons."""

    board: str
    recipes: tuple[str, ...]
    stage: int
    data_dir: str
    out_dir: str
    cache_dir: str
    ssh_key: str | None = None  # a public key file; None: generated per output dir
    offline: bool = False
    mirror: str | None = None
    supplies: tuple[tuple[str, str], ...] = ()  # (file name, path): --supply FILE=PATH
    check_needs: bool = True  # False: no image is made (`tuoba kernel config`), needs don't matter
    cache_url: str | None = None  # a shared remote cache behind the local one (tuoba.remote)
    # another local cache to take entries of these kinds from (tuoba.reproducible's second
    # build takes the first one's downloads)
    reuse_from: str | None = None
    reuse_kinds: tuple[str, ...] = ()

    def to_json(self) -> str:
        """For people reading a build's records (request.json); SCons gets the whole Plan.
        A cache URL is written without what may hold secrets (user info, query)."""
        data = dataclasses.asdict(self)
        if self.cache_url:
            data["cache_url"] = safe_url(self.cache_url)
        return json.dumps(data, indent=2, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Overlay:
    name: str
    path: Path
    where: str = ""  # the tree as errors name it (relative to the project); "": overlays/NAME

    @property
    def display(self) -> str:
        return self.where or f"overlays/{self.name}"


@dataclasses.dataclass(frozen=True)
class Supplied:
    """A file the board needs and the user supplied (`--supply FILE=PATH`), checked."""

    file: str
    path: Path
    sha256: str


@dataclasses.dataclass(frozen=True)
class Plan:
    request: Request
    board: Board
    recipes: tuple[Recipe, ...]
    # Recipes not asked for by name that this image is built without: (name, who brought it,
    # why it is left out: no form for the stage, a file that was not supplied).
    left_out: tuple[tuple[str, str, str], ...]
    features: tuple[Feature, ...]
    fragments: tuple[Feature, ...]  # everything the kernel config gets, in order
    kernel_dtbs: tuple[str, ...]  # device trees the (shared) kernel build makes
    board_dts: tuple[Path, ...]  # those of them whose source is a board's own <name>.dts
    supplied: tuple[Supplied, ...]  # files the user supplied for the board's needs
    packages: tuple[str, ...]  # stage 1: Debian packages
    # those of them installed from another suite of the release: package -> suite
    suites: tuple[tuple[str, str], ...]
    # archive components besides main the packages come from (recipe.COMPONENTS)
    components: tuple[str, ...]
    builds: tuple[str, ...]  # stage 2: userland/ packages built by LLVM against musl
    overlays: tuple[Overlay, ...]
    artifacts: tuple[Artifact, ...]  # pinned files of the recipes' sources.yaml, for this arch
    services: tuple[str, ...]
    ports: tuple[int, ...]  # what the recipes' services listen on (recipe.PORTS)
    tests: tuple[str, ...]
    # The guest checks of recipes left out for a file that was not supplied: (check file,
    # why not run); `tuoba test` reports them as skipped with that reason, never as passed.
    not_run: tuple[tuple[str, str], ...]
    oci_images: tuple[OciImage, ...]  # container images made of the image's packages
    bpf_programs: tuple[bpf.Program, ...]  # bpf/ programs built for the image (the bpf step)
    kernel_files: tuple[str, ...]  # the built kernel's files the image keeps (recipe.KERNEL_FILES)
    venvs: tuple[Venv, ...]  # stage 1: the recipes' Python venvs of pinned wheels (the venv step)
    release: str
    mirrors: tuple[str, ...]
    security_mirrors: tuple[str, ...]
    version: str
    source_date_epoch: int  # every file in the image is dated then (see source_date_epoch)

    @property
    def data_dir(self) -> Path:
        return Path(self.request.data_dir)

    @property
    def out_dir(self) -> Path:
        return Path(self.request.out_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.request.cache_dir)

    @functools.cached_property
    def store(self) -> Store:
        """The build cache, noting its uses as this board and stage (and the remote cache
        behind it, when there is one)."""
        url, mirror = self.request.cache_url, self.request.reuse_from
        remote: Remote | None = RemoteCache.open(url) if url else None
        if mirror:
            remote = Mirror(Path(mirror), self.request.reuse_kinds)
        return Store(self.cache_dir, label=f"{self.board.name}-s{self.stage}", remote=remote)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for the SCons process without the store (each process opens its own)."""
        return {k: v for k, v in self.__dict__.items() if k != "store"}

    @property
    def stage(self) -> int:
        return self.request.stage

    @property
    def image_name(self) -> str:
        return image_name(self.board.name, self.stage, self.version)

    @property
    def build_dir(self) -> Path:
        return self.out_dir / ".build" / f"{self.board.name}-s{self.stage}"

    @property
    def ssh_key(self) -> Path:
        """The public key put into root's authorized_keys."""
        if self.request.ssh_key:
            return Path(self.request.ssh_key)
        return default_ssh_key(self.out_dir).with_suffix(".pub")

    # Step inputs: what each step's output depends on (SCons signs these; the root
    # filesystem's are its stage's: stages.Stage.root_inputs).
    def overlay_inputs(self) -> dict[str, Any]:
        return {
            "overlays": [(o.name, str(o.path)) for o in self.overlays],
            "context": render_context(self, ssh_public_key="(key file signed separately)"),
        }

    def image_inputs(self) -> dict[str, Any]:
        return {
            "name": self.image_name,
            "image": dataclasses.asdict(self.board.image),
            "services": self.services,
            "kernel": dataclasses.asdict(self.board.kernel),
            "fragments": [[o.name, o.value] for f in self.fragments for o in f.options],
            "features": [f.name for f in self.features],
            "recipes": [r.name for r in self.recipes],
            "console": self.board.console,
            "boot": dataclasses.asdict(self.board.boot),
            "qemu": None if self.board.qemu is None else dataclasses.asdict(self.board.qemu),
            "kernel_cmdline": self.board.kernel.cmdline,
            "supplied": {s.file: s.sha256 for s in self.supplied},
            # (absent when there are none: images of unchanged inputs keep their UUIDs)
            **({"ports": self.ports} if self.ports else {}),
            **(
                {"artifacts": [[a.install, a.mode, a.source.sha256] for a in self.artifacts]}
                if self.artifacts
                else {}
            ),
            **(
                {"oci_images": [dataclasses.asdict(i) for i in self.oci_images]}
                if self.oci_images
                else {}
            ),
            **({"bpf": [p.name for p in self.bpf_programs]} if self.bpf_programs else {}),
            **({"kernel_files": self.kernel_files} if self.kernel_files else {}),
            **({"venvs": [dataclasses.asdict(v) for v in self.venvs]} if self.venvs else {}),
        }


# The date of files in an image built outside a git checkout, unless SOURCE_DATE_EPOCH is set.
DEFAULT_EPOCH = 1700000000


def source_date_epoch(data_dir: Path) -> int:
    """When every file in the image is dated (the reproducible-builds convention): the
    SOURCE_DATE_EPOCH the environment sets, else the time of the project checkout's last
    commit, else a fixed time. A build's date is then its input, not its clock."""
    given = os.environ.get("SOURCE_DATE_EPOCH")
    if given is not None:
        if not given.strip().isdigit():
            raise InputError(
                f"SOURCE_DATE_EPOCH={given!r} in the environment is not a number of seconds",
                hint="set it to a Unix time (e.g. $(git log -1 --format=%ct)) or unset it",
            )
        return int(given)
    if (data_dir / ".git").exists() and shutil.which("git"):
        proc = run.run(["git", "-C", str(data_dir), "log", "-1", "--format=%ct"], capture=True,
                       capture_stderr=True, check=False)  # fmt: skip
        if proc.returncode == 0 and proc.stdout.strip().isdigit():
            return int(proc.stdout.strip())
    return DEFAULT_EPOCH


def image_name(board: str, stage: int, version: str = __version__) -> str:
    return f"tuoba-{board}-s{stage}-{version}"


_KEY_TYPES = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+)$")


def check_public_key(key: Path) -> None:
    """--ssh-key must be one OpenSSH public key that ssh-keygen accepts: it becomes root's
    authorized key, so a private key or any other file is refused before the build starts."""
    flag = f"--ssh-key {key}"
    hint = "give an OpenSSH public key file, e.g. ~/.ssh/id_ed25519.pub (ssh-keygen -t ed25519)"
    if not key.is_file():
        raise InputError(f"{flag}: no such file", hint=hint)
    try:
        with key.open("rb") as f:
            raw = f.read(16385)
    except OSError as e:
        raise InputError(f"{flag}: cannot read: {e.strerror}", hint=hint) from e
    if b"PRIVATE KEY" in raw:
        raise InputError(f"{flag}: is a private key", hint="give the .pub file beside it")
    lines = [ln for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
    fields = lines[0].split() if len(lines) == 1 and len(raw) <= 16384 else []
    if len(fields) < 2 or not _KEY_TYPES.match(fields[0]):
        raise InputError(f"{flag}: not an OpenSSH public key (one line: TYPE BASE64 [comment])",
                         hint=hint)  # fmt: skip
    # (stdin empty: on a file it cannot read as a public key it asks for a passphrase)
    proc = run.run(["ssh-keygen", "-l", "-f", str(key)], capture=True, capture_stderr=True,
                   check=False, input="", timeout=30)  # fmt: skip
    if proc.returncode != 0:
        said = " ".join((proc.stderr or "").split())  # (quoted in tuoba's sentence, not above it)
        raise InputError(
            f"{flag}: ssh-keygen does not accept it as a public key"
            + (f" (it says: {said})" if said else ""),
            hint=hint,
        )


def default_ssh_key(out_dir: Path) -> Path:
    return out_dir / "ssh" / "tuoba_ed25519"


def render_context(plan: Plan, ssh_public_key: str) -> dict[str, Any]:
    """What overlay templates (*.j2) see."""
    return {
        "board": {
            "name": plan.board.name,
            "hostname": plan.board.hostname,
            "arch": plan.board.arch,
            "soc": plan.board.soc,
            "console": plan.board.console,
        },
        "stage": plan.stage,
        "recipes": [r.name for r in plan.recipes],
        "version": plan.version,
        "ssh_public_key": ssh_public_key,
    }


def flavour_boards(data_dir: Path, board: Board) -> list[Board]:
    """The boards sharing this board's kernel flavour (itself included), by name."""
    flavour = board.kernel.flavour or board.arch
    found = []
    for name in board_names(data_dir):
        other = board if name == board.name else load_board(data_dir, name)[0]
        if other.name != board.name and any(n.file is None for n in other.boot.needs):
            continue  # a board that cannot be built here does not shape the shared kernel
        if other.kernel.source == "tuoba" and (other.kernel.flavour or other.arch) == flavour:
            if other.arch != board.arch:
                raise InputError(
                    f"boards '{board.name}' ({board.arch}) and '{other.name}' ({other.arch}) "
                    f"share kernel flavour '{flavour}'",
                    hint="a flavour is one kernel build: give boards of another arch their own",
                )
            found.append(other)
    return found


def _check_features(
    data_dir: Path, names: tuple[str, ...], arch: str, doc: Doc, path: tuple[str | int, ...]
) -> list[Feature]:
    known = feature_names(data_dir)
    out = []
    for i, n in enumerate(names):
        if n not in known:
            raise doc.error(
                (*path, i), f"unknown feature '{n}'", hint=f"known: {', '.join(known) or 'none'}"
            )
        out.append(load_feature(data_dir, n, arch))
    return out


def _check_venvs(recipes: list[Recipe], stage: int, arch: str) -> tuple[Venv, ...]:
    """The recipes' Python venvs (stage 1: stage 2 has no Python), each at a path of its own
    and for the board's architecture."""
    if stage != 1:
        return ()
    by_path: dict[str, Venv] = {}
    for r in recipes:
        if r.venv is None:
            continue
        r.venv.check_arch(arch, r.name)
        if (other := by_path.setdefault(r.venv.path, r.venv)) is not r.venv:
            raise InputError(
                f"{r.venv.where}: the venv {r.venv.path} is also {other.where}'s",
                hint="give each recipe's venv a path of its own",
            )
    return tuple(by_path.values())


def _check_artifacts(recipes: list[Recipe], stage: int) -> tuple[Artifact, ...]:
    """The recipes' pinned files: no two put at one path, no two of one name with other bytes
    (the fetch step keeps sources by name)."""
    by_path: dict[str, str] = {}
    by_name: dict[str, tuple[str, str]] = {}
    out = []
    for r in recipes:
        for a in (a for a in r.artifacts if stage in a.stages):
            if (other := by_path.setdefault(a.install, r.name)) != r.name:
                raise InputError(
                    f"recipes '{other}' and '{r.name}' both install {a.install}",
                    hint=f"drop one (recipes/{r.name}/sources.yaml)",
                )
            seen = by_name.setdefault(a.source.name, (a.source.sha256, r.name))
            if seen[0] != a.source.sha256:
                raise InputError(
                    f"recipes '{seen[1]}' and '{r.name}' pin different files named {a.source.name}",
                    hint=f"pin the same sha256, or fetch it under another URL name "
                    f"(recipes/{r.name}/sources.yaml)",
                )
            out.append(a)
    return tuple(out)


def _check_oci_images(
    recipes: list[tuple[Recipe, Section]], docs: dict[str, Doc], packages: list[str], stage: int
) -> tuple[OciImage, ...]:
    """The recipes' container images: each made of packages the image installs, each name
    once."""
    out: dict[str, OciImage] = {}
    for r, sec in recipes:
        for i, image in enumerate(sec.oci_images):
            where = (f"stage{stage}", "oci_images", i)
            for j, p in enumerate(image.packages):
                if p not in packages:
                    raise docs[r.name].error(
                        (*where, "packages", j),
                        f"'{p}' is not a package of this image",
                        hint="an OCI image is made of the image's own packages: add it to "
                        "the recipe's packages",
                    )
            if image.name in out:
                raise docs[r.name].error((*where, "name"), f"image {image.name} is made twice")
            clash = next((o for o in out.values() if o.archive == image.archive), None)
            if clash is not None:
                raise docs[r.name].error(
                    (*where, "name"),
                    f"image {image.name} would be written to {image.archive}, as is {clash.name}",
                    hint="give one of them a name that differs in more than '/', ':' and '-'",
                )
            out[image.name] = image
    return tuple(out.values())


def _check_suites(
    recipes: list[tuple[Recipe, Section]], docs: dict[str, Doc], stage: int
) -> tuple[tuple[str, str], ...]:
    """Packages the recipes take from another suite of the image's release (its mirror is the
    release's own, from the host's apt configuration); one package from one suite."""
    out: dict[str, str] = {}
    for r, sec in recipes:
        for suite, packages in sec.suites:
            where = (f"stage{stage}", "suites", suite)
            if not suite.startswith(f"{DEBIAN_RELEASE}-"):
                raise docs[r.name].error(
                    where,
                    f"the image is Debian {DEBIAN_RELEASE}: suite '{suite}' is of another release",
                    hint=f"name a suite of {DEBIAN_RELEASE}, like {DEBIAN_RELEASE}-backports",
                )
            for p in packages:
                if out.setdefault(p, suite) != suite:
                    raise docs[r.name].error(
                        where, f"package {p} is asked for from {out[p]} and from {suite}"
                    )
    return tuple(out.items())


def _check_kernel_files(
    board: Board,
    recipes: list[tuple[Recipe, Section]],
    docs: dict[str, Doc],
    stage: int,
) -> tuple[str, ...]:
    """The kernel's files the recipes keep in the image: only a kernel tuoba builds has them
    (a Debian kernel's image is in /boot already; its debug info is a package of its own)."""
    wanted: dict[str, None] = {}
    for r, sec in recipes:
        for i, name in enumerate(sec.kernel_files):
            if board.kernel.source != "tuoba":
                raise docs[r.name].error(
                    (f"stage{stage}", "kernel_files", i),
                    f"board {board.name} boots Debian's kernel, so its '{name}' is not built here",
                    hint="install the kernel's files through packages (e.g. its -dbg package), "
                    "or use a board whose kernel tuoba builds",
                )
            wanted[name] = None
    return tuple(wanted)


def _check_programs(
    data_dir: Path,
    board: Board,
    recipes: list[tuple[Recipe, Section]],
    docs: dict[str, Doc],
    packages: list[str],
    stage: int,
) -> tuple[bpf.Program, ...]:
    """The bpf/ programs the recipes ask for: each exists, runs on the board's architecture
    and kernel, and (stage 1) the image has the libbpf headers its loader is compiled with."""
    out: dict[str, bpf.Program] = {}
    known = bpf.program_names(data_dir)
    features = feature_names(data_dir)
    for r, sec in recipes:
        for i, name in enumerate(sec.bpf):
            where = (f"stage{stage}", "bpf", i)
            if name not in known:
                raise docs[r.name].error(
                    where, f"no eBPF program bpf/{name}/", hint=f"known: {', '.join(known)}"
                )
            prog = bpf.load_program(data_dir, name)
            if prog.arch and board.arch not in prog.arch:
                raise docs[r.name].error(
                    where,
                    f"bpf/{name} runs on {', '.join(prog.arch)}, not on {board.name} "
                    f"({board.arch})",
                    hint=f"leave it out for {board.arch} (the recipe's arch: {board.arch}: "
                    "section can set bpf: [])",
                )
            if board.kernel.source != "tuoba":
                raise docs[r.name].error(
                    where,
                    f"bpf/{name} is compiled against the BTF of a kernel tuoba builds; board "
                    f"{board.name} boots the distribution's kernel",
                    hint="use kernel source tuoba for the board, or leave the program out",
                )
            if stage == 1 and "libbpf-dev" not in packages:  # (stage 2: userland/libbpf)
                raise docs[r.name].error(
                    where,
                    f"bpf/{name}'s loader is compiled with the image's libbpf headers, and "
                    "the image has no libbpf-dev",
                    hint="add libbpf-dev to the recipe's packages",
                )
            for n in prog.kernel_features:
                if n not in features:
                    raise InputError(
                        f"bpf/{name}/program.yaml: kernel_features: unknown feature '{n}'",
                        hint=f"known: {', '.join(features)}",
                    )
            out.setdefault(name, prog)
    return tuple(out.values())


def _unsupplied(recipe: Recipe, stage: int, given: dict[str, str]) -> list[Artifact]:
    """The files a recipe needs supplied (not optional) that were not."""
    return [
        a
        for a in recipe.artifacts
        if a.supplied and not a.optional and stage in a.stages and a.source.name not in given
    ]


def _given_artifacts(
    artifacts: tuple[Artifact, ...], given: dict[str, str], board: Board
) -> tuple[Artifact, ...]:
    """The recipes' artifacts with the files the user supplied for them, each checked by its
    pinned hash now, before any work; an optional one not supplied is left out. A --supply
    name that neither the board nor a recipe takes is an error."""
    out = []
    for a in artifacts:
        if not a.supplied:
            out.append(a)
            continue
        if a.source.name not in given:
            continue  # (optional: a required one was refused while resolving the recipes)
        flag = f"--supply {a.source.name}={given[a.source.name]}"
        path = Path(given[a.source.name]).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"{flag}: no such file", hint=f"download it from {a.source.url}")
        got = sources.sha256_file(path)
        if got != a.source.sha256:
            release = f" of {a.version}" if a.version else ""
            raise InputError(
                f"{flag}: sha256 {got} is not the pinned {a.source.sha256}{release}",
                hint=f"download it again from {a.source.url} (pinned from {a.source.origin})"
                if a.source.origin
                else f"download it again from {a.source.url}",
            )
        out.append(dataclasses.replace(a, given=str(path)))
    takes = {n.file for n in board.boot.needs if n.file} | {
        a.source.name for a in artifacts if a.supplied
    }
    for file in given:
        if file not in takes:
            raise InputError(
                f"--supply {file}: neither board '{board.name}' nor the recipes take a file "
                f"named '{file}'",
                hint=f"they take: {', '.join(sorted(takes))}" if takes else "they take none",
            )
    return tuple(out)


def _check_supplies(board: Board, supplies: tuple[tuple[str, str], ...]) -> tuple[Supplied, ...]:
    """Every need of the board met by a supplied file, each supplied file checked; otherwise
    the error names what is missing, why, where to get it and how to hand it over. (Files a
    recipe takes are checked with the recipes: _given_artifacts.)"""

    takes = [n.file for n in board.boot.needs if n.file]
    given = {file: path for file, path in supplies if file in takes}
    out = []
    for need in board.boot.needs:
        if need.file is None or need.file not in given:
            how = f"; then pass --supply {need.file}=PATH" if need.file else ""
            said = (
                f"board '{board.name}' needs a file tuoba cannot fetch: {need.what}"
                if need.file
                else f"board '{board.name}' cannot be built here: it needs {need.what}"
            )
            raise InputError(
                said,
                hint=f"{need.why}. Get it from: {need.where}{how} (boards/{board.name}/board.yaml)",
            )
        path = Path(given[need.file]).expanduser().resolve()
        if not path.is_file():
            raise InputError(
                f"--supply {need.file}={given[need.file]}: no such file",
                hint=f"give the path of {need.what}",
            )
        if need.format is not None:
            check_supplied(path, need.format, need.file, board.image.first_partition)
        out.append(Supplied(need.file, path, sources.sha256_file(path)))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class StageRules:
    """What resolving a plan must know of a stage; how its root filesystem is built is
    tuoba.stages' (a layer above)."""

    debian: bool  # the image is Debian: the board's packages (and a distro kernel) go in
    check: Callable[[Path, Board, Doc], None]  # refuses what the stage cannot build


def _stage2_check(data_dir: Path, board: Board, board_doc: Doc) -> None:
    userland.target(board.arch)  # an arch stage 2 cannot build for is an error here
    userland.load_toolchain(data_dir)
    if board.kernel.source != "tuoba":
        raise board_doc.error(
            ("kernel", "source"),
            "stage 2 needs the TuobaOS kernel (source: tuoba): its headers and modules come "
            "from the clang build",
        )


STAGES: dict[int, StageRules] = {
    1: StageRules(debian=True, check=lambda data_dir, board, doc: None),
    2: StageRules(debian=False, check=_stage2_check),
}


def overlay_trees(
    data_dir: Path, board: Board, recipes: list[tuple[Recipe, Section]], stage: int
) -> list[Overlay]:
    """The overlay trees an image gets, in the order they are applied (a later file wins):
    the board's own, then each recipe's shared overlays and its own, in the recipes' order."""
    overlays = [Overlay(f"board:{board.name}", board.directory / "overlay",
                        f"boards/{board.name}/overlay")]  # fmt: skip
    overlays = [o for o in overlays if o.path.is_dir()]
    for r, sec in recipes:
        overlays += [Overlay(o, data_dir / "overlays" / o) for o in sec.overlays]
        if (own := r.own_overlay(stage)) is not None:
            overlays.append(Overlay(own[0], own[1], str(own[1].relative_to(data_dir))))
    return overlays


def resolve(req: Request) -> Plan:
    data_dir = Path(req.data_dir)
    if req.stage not in STAGES:
        hint = {
            3: "stage 3 (llvm-libc in place of musl) is not built yet: llvm-libc 14 (the "
            "host's LLVM) has no full C library for Linux; use --stage 1 or --stage 2",
        }.get(req.stage, "stages are 1 (Debian) and 2 (LLVM + musl); 3 is not built yet")
        raise InputError(f"stage {req.stage} is not supported", hint=hint)
    board, board_doc = load_board(data_dir, req.board)
    if board.kernel.source == "tuoba":
        kbuild.load_source(data_dir)  # validated here, not first read by the kernel step
    if board.boot.method not in Bootloader.registry:
        raise board_doc.error(
            ("boot", "method"),
            f"boot method '{board.boot.method}' is described but tuoba does not write it yet",
        )
    features: dict[str, Feature] = {
        f.name: f
        for f in _check_features(
            data_dir, board.kernel.features, board.arch, board_doc, ("kernel", "features")
        )
    }
    recipes: list[tuple[Recipe, Section]] = []
    docs: dict[str, Doc] = {}
    left_out: list[tuple[str, str, str]] = []
    not_run: list[tuple[str, str]] = []
    given = dict(req.supplies)
    known = recipe_names(data_dir)
    seen: set[str] = set()
    # Each recipe with where it was asked for: a default of the board, an umbrella's include,
    # or the command line. Only those asked for on the command line must have a form for the
    # stage; the others without one are left out, and the build says so.
    wanted: list[tuple[str, str]] = [
        *((n, "request") for n in req.recipes[:1]),
        *((n, f"a default of board '{board.name}'") for n in board.recipes),
        *((n, "request") for n in req.recipes[1:]),
    ]
    for name, origin in wanted:  # (grows: an umbrella's includes are appended as met)
        if name in board.recipes and name not in known:
            raise board_doc.error(
                ("recipes", board.recipes.index(name)),
                f"no recipe '{name}'",
                hint=f"known: {', '.join(known)}",
            )
        if name in seen:
            continue
        seen.add(name)
        recipe, doc = load_recipe(data_dir, name)
        recipe = recipe.for_arch(board.arch)
        section = recipe.section(req.stage)
        asked = origin == "request" or name in req.recipes
        if section is None and not asked:
            # (the caller says so: not asked for by name)
            left_out.append((name, origin, f"has no stage-{req.stage} form"))
            continue
        if section is not None and (missing := _unsupplied(recipe, req.stage, given)):
            a = missing[0]
            release = f" ({a.version})" if a.version else ""
            why = f"needs {a.source.name}{release}, which tuoba cannot download here"
            if not asked:
                left_out.append((name, origin, f"{why} and which was not supplied"))
                not_run += [
                    (str(recipe.check_file(t).relative_to(data_dir)),
                     f"recipe '{name}' is not in this image: it {why} "
                     f"(--supply {a.source.name}=PATH)")
                    for t in section.tests
                ]  # fmt: skip
                continue
            raise InputError(
                f"{a.where}: recipe '{name}' {why}",
                hint=f"download it from {a.source.url} (sha256 {a.source.sha256}), then pass "
                f"--supply {a.source.name}=PATH (recipes/{name}/sources.yaml)",
            )
        if section is None:
            raise InputError(
                f"{doc.where(())}: recipe '{name}' has no stage-{req.stage} form "
                f"(no stage{req.stage} section)",
                hint=f"build it with --stage 1, or give the recipe a stage{req.stage} section",
            )
        for i, included in enumerate(recipe.includes):  # (only a recipe kept brings its own)
            if included not in known:
                raise doc.error(
                    ("includes", i),
                    f"no recipe '{included}'",
                    hint=f"known: {', '.join(known)}",
                )
            wanted.append((included, f"included by recipe '{name}'"))
        recipes.append((recipe, section))
        docs[name] = doc
        for f in _check_features(
            data_dir, recipe.kernel_features, board.arch, doc, ("kernel_features",)
        ):
            features.setdefault(f.name, f)
        where = f"stage{req.stage}"
        for i, o in enumerate(section.overlays):
            if not (data_dir / "overlays" / o).is_dir():
                raise doc.error((where, "overlays", i), f"no overlay directory overlays/{o}/")
        for i, t in enumerate(section.tests):
            if not recipe.check_file(t).is_file():
                raise doc.error(
                    (where, "tests", i),
                    f"no guest check module recipes/{recipe.name}/checks/test_{t}.py",
                )
        for i, b in enumerate(section.builds):
            if not (data_dir / "userland" / b / "package.yaml").is_file():
                raise doc.error((where, "builds", i), f"no package userland/{b}/package.yaml")
            userland.load_package(data_dir, b)  # validated before any side effect

    fragments = list(features.values())
    kernel_dtbs: tuple[str, ...] = ()
    board_dts: tuple[Path, ...] = ()
    if board.kernel.source == "tuoba":
        base = load_fragment(data_dir / "kernel" / "base.config", "base", "kernel/base.config")
        arch = load_fragment(
            data_dir / "kernel" / "arch" / f"{board.arch}.config",
            f"arch:{board.arch}",
            f"kernel/arch/{board.arch}.config",
        )
        # One kernel serves every board of a flavour: it gets all their platform fragments
        # and device trees, so building any of them builds (and caches) the same kernel.
        siblings = flavour_boards(data_dir, board)
        board_frags = [
            load_fragment(
                b.directory / "kernel.config", f"board:{b.name}", f"boards/{b.name}/kernel.config"
            )
            for b in siblings
            if (b.directory / "kernel.config").is_file()
        ]
        fragments = [base, arch, *board_frags, *fragments]
        kernel_dtbs = tuple(sorted({d for b in siblings for d in b.kernel.dtbs}))
        # A board whose device tree is not in Linux ships it as boards/<name>/<dtb>.dts.
        board_dts = tuple(
            sorted(
                b.directory / f"{d}.dts"
                for b in siblings
                for d in b.kernel.dtbs
                if (b.directory / f"{d}.dts").is_file()
            )
        )

    rules = STAGES[req.stage]
    rules.check(data_dir, board, board_doc)
    packages: list[str] = []  # Debian packages: stage 2 installs none at all
    if rules.debian:
        if board.kernel.source == "distro":
            # The distro kernel needs an initramfs (virtio and ext4 are modules in Debian's).
            packages += [board.kernel.package, "initramfs-tools"]
        packages += board.packages
    packages += [p for _, sec in recipes for p in sec.packages]
    suites = _check_suites(recipes, docs, req.stage)
    packages += [p for p, _ in suites]
    components = tuple(sorted({c for _, sec in recipes for c in sec.components}))
    oci_images = _check_oci_images(recipes, docs, packages, req.stage)
    overlays = overlay_trees(data_dir, board, recipes, req.stage)

    artifacts = _check_artifacts([r for r, _ in recipes], req.stage)
    artifacts = _given_artifacts(artifacts, given, board)
    supplied = _check_supplies(board, req.supplies) if req.check_needs else ()
    programs = _check_programs(data_dir, board, recipes, docs, packages, req.stage)
    for f in (load_feature(data_dir, n, board.arch) for p in programs for n in p.kernel_features):
        if f.name not in features:  # (a program's features are asserted like a recipe's)
            features[f.name] = f
            fragments.append(f)

    if req.mirror:
        mirrors = [req.mirror.rstrip("/")]
        security: list[str] = []
    else:
        mirrors = apt.debian_mirrors(DEBIAN_RELEASE)
        security = apt.security_mirrors(DEBIAN_RELEASE)
    if not mirrors:
        raise InputError(
            f"no Debian mirror for '{DEBIAN_RELEASE}' in the host's apt sources",
            hint="add one to /etc/apt/sources.list.d/, or pass --mirror URL (TUOBA_MIRROR)",
        )
    if req.ssh_key:
        check_public_key(Path(req.ssh_key))
    if req.cache_url:
        objects_for(req.cache_url)  # an URL of another kind is refused before the build

    return Plan(
        request=req,
        board=board,
        recipes=tuple(r for r, _ in recipes),
        left_out=tuple(left_out),
        features=tuple(features.values()),
        fragments=tuple(fragments),
        kernel_dtbs=kernel_dtbs,
        board_dts=board_dts,
        supplied=supplied,
        packages=tuple(dict.fromkeys(packages)),
        suites=suites,
        components=components,
        builds=tuple(dict.fromkeys(b for _, sec in recipes for b in sec.builds)),
        overlays=tuple(overlays),
        artifacts=artifacts,
        services=tuple(dict.fromkeys(s for _, sec in recipes for s in sec.services)),
        ports=tuple(sorted({p for _, sec in recipes for p in sec.ports})),
        oci_images=oci_images,
        bpf_programs=programs,
        kernel_files=_check_kernel_files(board, recipes, docs, req.stage),
        venvs=_check_venvs([r for r, _ in recipes], req.stage, board.arch),
        tests=tuple(
            dict.fromkeys(
                [
                    *(
                        str(r.check_file(t).relative_to(data_dir))
                        for r, sec in recipes
                        for t in sec.tests
                    ),
                    # the clang-built kernel proves its features in the guest
                    *([IMAGE_CHECKS + "test_kernel.py"] if board.kernel.source == "tuoba" else []),
                ]
            )
        ),
        not_run=tuple(not_run),
        release=DEBIAN_RELEASE,
        mirrors=tuple(mirrors),
        security_mirrors=tuple(security),
        version=__version__,
        source_date_epoch=source_date_epoch(data_dir),
    )
