"""Guest checks for the `devtools` recipe (stage 1): each tool does its job on the board.

- `cc` is clang and links with lld; a C and a C++ program compile and run;
- gdb prints the backtrace of a program that crashed, naming the function it crashed in;
- strace shows the file a program opened;
- perf counts a software event (page faults) at least as often as the program caused it;
- drgn reads live values of the running kernel through its debug info (the recipe keeps the
  kernel's vmlinux where drgn looks);
- Python makes a venv and pip installs a local project into it (offline);
- Go, Rust (cargo) and Node.js each build or run a program that computes a known answer;
- git commits and reads back.

Everything is TCG underneath: compilers are slow there, so each command has a generous limit.
Each check works in a directory of its own under /tmp and removes it.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.guest

PAGES = 2000  # pages the fault program touches: perf must count at least that many faults

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    long pages = argc > 1 ? atol(argv[1]) : 0;
    long sum = 0;
    for (long i = 1; i <= 100; i++)
        sum += i * i;
    if (pages > 0) {  /* touch each page once: one fault per page */
        char *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return 1;
        for (long i = 0; i < pages; i++)
            p[i * 4096] = 1;
    }
    printf("sum of squares %ld\n", sum);
    return 0;
}
"""

CXX_PROGRAM = r"""
#include <iostream>
#include <numeric>
#include <vector>
int main() {
    std::vector<int> v(10);
    std::iota(v.begin(), v.end(), 1);
    std::cout << "product " << std::accumulate(v.begin(), v.end(), 1L, std::multiplies<long>())
              << std::endl;
}
"""

FIB_RS = r"""
fn main() {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..90 {
        let t = a + b;
        a = b;
        b = t;
    }
    println!("fib90 {}", a);
}
"""

CRASH_PROGRAM = r"""
#include <stddef.h>
__attribute__((noinline)) void tuoba_crash_here(volatile int *p) { *p = 42; }
int main(void) { tuoba_crash_here(NULL); return 0; }
"""


@pytest.fixture
def work(host: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    path = f"/tmp/devtools-{request.node.originalname}"
    host.run(f"rm -rf {path} && mkdir -p {path}")
    yield path
    host.run(f"rm -rf {path}")


def put(host: Any, path: str, text: str) -> None:
    host.check_output(f"mkdir -p $(dirname {path}) && printf '%s' {shlex.quote(text)} > {path}")


def ok(host: Any, command: str, limit: int = 600) -> str:
    """Run `command` in the guest with a time limit; its output, or a failure that shows it."""
    res = host.run(f"timeout {limit} sh -c {shlex.quote(command)}")
    assert res.rc == 0, f"{command!r}: exit {res.rc}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return str(res.stdout)


def test_cc_is_clang_linking_with_lld(host: Any, work: str) -> None:
    """`cc` is clang; the program it builds was linked by lld (its .comment says so) and runs."""
    assert "clang version" in ok(host, "cc --version")
    put(host, f"{work}/sum.c", C_PROGRAM)
    ok(host, f"cd {work} && cc -O2 -o sum sum.c")
    assert ok(host, f"{work}/sum").strip() == "sum of squares 338350"
    comment = ok(host, f"readelf -p .comment {work}/sum")
    assert re.search(r"Linker: (Debian )?LLD", comment), comment


def test_cxx_program_builds_and_runs(host: Any, work: str) -> None:
    """`c++` (clang++, lld, libstdc++) builds a program using the standard library."""
    put(host, f"{work}/product.cc", CXX_PROGRAM)
    ok(host, f"cd {work} && c++ -O2 -o product product.cc")
    assert ok(host, f"{work}/product").strip() == "product 3628800"


def test_gdb_prints_the_backtrace_of_a_crash(host: Any, work: str) -> None:
    """A program that writes through NULL gets SIGSEGV under gdb, and the backtrace names the
    function it crashed in and its caller, with the source line."""
    put(host, f"{work}/crash.c", CRASH_PROGRAM)
    ok(host, f"cd {work} && cc -g -O0 -o crash crash.c")
    out = ok(host, f"cd {work} && gdb -q -batch -ex run -ex bt ./crash 2>&1")
    assert "SIGSEGV" in out, out
    frames = [line for line in out.splitlines() if re.match(r"#\d+ ", line)]
    assert frames and "tuoba_crash_here" in frames[0] and "crash.c:3" in frames[0], out
    assert any(" main " in f for f in frames[1:]), out


def test_strace_shows_the_file_a_program_opens(host: Any, work: str) -> None:
    """strace records the openat of the file cat was asked to read."""
    ok(host, f"echo traced > {work}/traced.txt")
    out = ok(host, f"strace -f -e trace=openat -o {work}/trace cat {work}/traced.txt >/dev/null "
             f"&& cat {work}/trace")  # fmt: skip
    assert re.search(rf'openat\(AT_FDCWD, "{work}/traced.txt", O_RDONLY', out), out


def test_perf_counts_the_page_faults_a_program_causes(host: Any, work: str) -> None:
    """perf stat counts the page-faults software event: at least one per page the program
    touched, and not wildly more."""
    put(host, f"{work}/sum.c", C_PROGRAM)
    ok(host, f"cd {work} && cc -O2 -o faults sum.c")
    out = ok(host, f"perf stat -x, -e page-faults -- {work}/faults {PAGES} 2>&1 >/dev/null")
    line = next(x for x in out.splitlines() if "page-faults" in x)
    faults = int(line.split(",")[0])
    assert PAGES <= faults < PAGES + 1000, out


def test_drgn_reads_the_live_kernel(host: Any, work: str) -> None:
    """drgn, with the vmlinux the image keeps, reads init_task's name and the release string
    from the running kernel's memory."""
    release = host.check_output("uname -r")
    assert host.file(f"/usr/lib/debug/lib/modules/{release}/vmlinux").exists
    put(host, f"{work}/live.py",
        "print(prog['init_task'].comm.string_().decode())\n"
        "print(prog['init_uts_ns'].name.release.string_().decode())\n")  # fmt: skip
    out = ok(host, f"drgn -q {work}/live.py")
    assert out.split() == ["swapper/0", release], out


def test_python_venv_and_pip_install_a_local_project(host: Any, work: str) -> None:
    """A venv is made and pip installs a project from a local directory into it (no index:
    the board may be offline); the venv's python imports it. The venv sees the system's
    packages and uses the system's pip (`--without-pip`: copying pip into every venv is half
    a minute under TCG, and no part of what is proven)."""
    put(host, f"{work}/proj/pyproject.toml",
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tuoba-hello"\nversion = "1.0"\n')  # fmt: skip
    put(host, f"{work}/proj/tuoba_hello.py", "def answer():\n    return 6 * 7\n")
    ok(host, f"python3 -m venv --system-site-packages --without-pip {work}/venv")
    ok(
        host,
        f"{work}/venv/bin/python -m pip install -q --no-index --no-build-isolation "
        f"--disable-pip-version-check {work}/proj",
    )
    # (one interpreter for the three answers: each start of python costs seconds under TCG)
    out = ok(
        host,
        f"{work}/venv/bin/python -c 'import importlib.metadata as m, tuoba_hello; "
        'print(tuoba_hello.answer(), m.version("tuoba-hello"), tuoba_hello.__file__)\'',
    )
    answer, version, site = out.split()
    assert (answer, version) == ("42", "1.0"), out  # the module, and the installed distribution
    assert site.startswith(f"{work}/venv/"), f"installed outside the venv: {site}"


def test_go_builds_and_runs_a_program(host: Any, work: str) -> None:
    """go build makes a static binary that computes a sha256 with the standard library."""
    put(host, f"{work}/main.go",
        'package main\nimport ("crypto/sha256"; "fmt")\n'
        'func main() { fmt.Printf("%x\\n", sha256.Sum256([]byte("tuoba"))) }\n')  # fmt: skip
    ok(host, f"cd {work} && HOME={work} GOCACHE={work}/cache go build -o hello main.go", 900)
    assert ok(host, f"{work}/hello").strip() == hashlib.sha256(b"tuoba").hexdigest()


def test_cargo_builds_and_runs_a_rust_program(host: Any, work: str) -> None:
    """cargo (offline: no crates) builds a Rust program that computes a known answer."""
    ok(host, f"cd {work} && cargo new --vcs none --quiet fib")
    put(host, f"{work}/fib/src/main.rs", FIB_RS)
    ok(host, f"cd {work}/fib && CARGO_HOME={work}/cargo cargo build --offline --quiet", 900)
    assert ok(host, f"{work}/fib/target/debug/fib").strip() == "fib90 2880067194370816120"


def test_node_runs_a_program(host: Any, work: str) -> None:
    """node runs a script using a built-in module (crypto) and gets the known digest."""
    put(host, f"{work}/hash.js",
        "const c = require('crypto');\n"
        "console.log(c.createHash('sha256').update('tuoba').digest('hex'));\n")  # fmt: skip
    assert ok(host, f"node {work}/hash.js").strip() == hashlib.sha256(b"tuoba").hexdigest()


def test_git_commits_and_reads_back(host: Any, work: str) -> None:
    """git makes a repository, commits a file and shows it back from the commit."""
    ok(host, f"cd {work} && git init -q repo && cd repo && echo edge > f.txt && git add f.txt "
             "&& git -c user.name=t -c user.email=t@tuoba commit -q -m first")  # fmt: skip
    assert ok(host, f"cd {work}/repo && git show HEAD:f.txt").strip() == "edge"
    assert ok(host, f"cd {work}/repo && git log --format=%s").strip() == "first"
