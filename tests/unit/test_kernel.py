from __future__ import annotations

from pathlib import Path

import pytest

from tuoba.errors import BuildError, InputError
from tuoba.kernel import assert_config, load_feature, missing_options, parse_config


def test_fragment_lines_are_parsed(project: Path) -> None:
    f = load_feature(project, "bpf")
    assert ("CONFIG_BPF_SYSCALL", "y") in {(o.name, o.value) for o in f.options}


@pytest.mark.parametrize(
    "line", ["CONFIG_FOO=yes", "FOO=y", "CONFIG_FOO", 'CONFIG_FOO="unterminated', "CONFIG_=y"]
)
def test_bad_fragment_line_names_file_and_line(project: Path, line: str) -> None:
    (project / "kernel/features/bad.config").write_text(f"# c\nCONFIG_OK=y\n{line}\n")
    with pytest.raises(InputError) as e:
        load_feature(project, "bad")
    assert e.value.message.startswith("kernel/features/bad.config:3: ")


def test_good_fragment_forms(project: Path) -> None:
    (project / "kernel/features/ok.config").write_text(
        'CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=n\nCONFIG_D="x y"\nCONFIG_E=16\n# CONFIG_F is not set\n'
    )
    f = load_feature(project, "ok")
    assert [o.value for o in f.options] == ["y", "m", "n", '"x y"', "16", "n"]


def test_missing_option_is_named_with_its_fragment(project: Path) -> None:
    config = parse_config("CONFIG_BPF=y\n# CONFIG_BPF_SYSCALL is not set\n")
    feature = load_feature(project, "bpf")
    assert "CONFIG_BPF_SYSCALL" in {o.name for o in missing_options(config, [feature])}
    with pytest.raises(BuildError, match=r"CONFIG_BPF_SYSCALL=y \(kernel/features/bpf.config:"):
        assert_config(config, [feature], "test kernel")


def test_fragments_merge_and_conflicts_name_both(project: Path) -> None:
    from tuoba.kbuild import merged_fragment
    from tuoba.kernel import Option

    a = [Option("CONFIG_A", "y", "a.config", 1), Option("CONFIG_B", "n", "a.config", 2)]
    b = [Option("CONFIG_A", "y", "b.config", 5), Option("CONFIG_C", '"x"', "b.config", 6)]
    text, chosen = merged_fragment([("a", a), ("b", b)])
    assert text == 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n'
    assert set(chosen) == {"CONFIG_A", "CONFIG_B", "CONFIG_C"}
    c = [Option("CONFIG_B", "y", "c.config", 9)]
    with pytest.raises(BuildError, match=r"CONFIG_B is n in a.config \(line 2\) but y in c.config"):
        merged_fragment([("a", a), ("c", c)])


def test_too_old_clang_names_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuoba import kbuild
    from tuoba.errors import HostToolError

    monkeypatch.setattr(kbuild.run, "output", lambda cmd: "clang version 10.0.1 (x)")
    with pytest.raises(HostToolError, match=r"clang 10 found .* needs clang >= 14"):
        kbuild.clang_version()


def test_every_shipped_fragment_parses(project: Path) -> None:
    from tuoba.kernel import feature_names

    names = feature_names(project)
    assert {"bpf", "kvm", "virtio", "containers", "security", "debug", "net", "storage"} <= set(
        names
    )
    for name in names:
        assert load_feature(project, name).options


def test_unknown_feature(project: Path) -> None:
    with pytest.raises(InputError, match="unknown kernel feature 'kvmm'"):
        load_feature(project, "kvmm")
