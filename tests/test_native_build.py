"""The C sources and their one interface: every source compiles on its own with the builders'
flags (GCC 14's default errors included), every external function is declared in the header
cffi reads, and the benchmark producers stay out of the runtime module.

The builders compile with the same flags, so a failure here is a failure of ``pip install``;
these tests say which file and which line, and also cover distribution flags (fortified
libc headers) that this machine's Python does not pass.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest
import uring_epoll._bench_native as bench_module
import uring_epoll._native as runtime_module
from cffi import FFI, CDefError

from uring_epoll import _bench_native_build, _native_build
from uring_epoll._bench_lib import lib as bench_lib
from uring_epoll._native_lib import ffi
from uring_epoll._native_lib import lib as runtime_lib
from uring_epoll.kernel import is_inside_uml

CSRC = _native_build.CSRC
RUNTIME_SOURCES = _native_build.SOURCES
BENCH_SOURCES = _bench_native_build.SOURCES
INTERNAL_HEADER = CSRC / "ue_internal.h"
#: The runtime's external functions that are not its interface: shared between its own
#: files, declared in ue_internal.h. A new one is a decision, to be made here too.
INTERNAL = {
    "ue_ring_attach",
    "ue__emu_wait",
    "ue__emu_idle",
    "ue__uring_poll",
    "ue__uring_wake",
    "ue__uring_pending",
}
#: What distributions' Pythons add (Debian, Ubuntu, Fedora): fortified libc headers mark
#: read/write/... warn_unused_result, which -Werror then turns into errors.
DISTRO_FLAGS = [
    "-U_FORTIFY_SOURCE",  # some compilers define it already: no "redefined" warning
    "-D_FORTIFY_SOURCE=2",
    "-fstack-protector-strong",
    "-Wformat",
    "-Werror=format-security",
]

CC = shutil.which("cc")
NM = shutil.which("nm")


def _need_toolchain() -> None:
    if is_inside_uml():
        pytest.skip("the build is the host's; nothing to learn from compiling it again here")
    if CC is None or NM is None:
        # The same machine could not have built the module; in CI that is a broken setup.
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but cc or nm is missing", pytrace=False)
        pytest.skip("no C compiler (cc) or nm on this machine")


def _compile(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CC or "cc",
            *_native_build.STRICT_CFLAGS,
            *DISTRO_FLAGS,
            "-fPIC",
            f"-I{CSRC}",
            *extra,
            "-c",
            str(source),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each C source compiled alone into an object file; a failure is reported by name."""
    _need_toolchain()
    out_dir = tmp_path_factory.mktemp("objects")
    built = {}
    errors = []
    for name in RUNTIME_SOURCES + BENCH_SOURCES:
        obj = out_dir / (name + ".o")
        result = _compile(CSRC / name, obj)
        if result.returncode:
            errors.append(f"{name}:\n{result.stderr}")
        built[name] = obj
    if errors:
        pytest.fail(
            "C sources do not compile with the builders' flags:\n" + "\n".join(errors),
            pytrace=False,
        )
    return built


def _external_functions(objs: list[Path]) -> set[str]:
    """Functions defined with external linkage in *objs* (nm type T)."""
    result = subprocess.run(
        [NM or "nm", "--defined-only", "-g", "-P", *map(str, objs)],
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "T":
            names.add(fields[0])
    return names


def _cdef_functions(header: Path, include: FFI | None = None) -> set[str]:
    """The functions *header* declares to cffi (what the module built from it exports)."""
    builder = FFI()
    if include is not None:
        builder.include(include)
    _native_build.cdef_from_header(builder, header)
    return set(_native_build.declared_functions(builder))


RUNTIME_API = _cdef_functions(_native_build.HEADER)
BENCH_API = _cdef_functions(_bench_native_build.HEADER, _native_build.ffibuilder)


def test_every_source_compiles_alone(objects: dict[str, Path]) -> None:
    assert sorted(objects) == sorted(RUNTIME_SOURCES + BENCH_SOURCES)
    assert all(obj.stat().st_size > 0 for obj in objects.values())


def test_flags_include_gcc14_default_errors() -> None:
    for flag in (
        "-Werror=implicit-function-declaration",
        "-Werror=implicit-int",
        "-Werror=int-conversion",
        "-Werror=incompatible-pointer-types",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wmissing-prototypes",
    ):
        assert flag in _native_build.STRICT_CFLAGS
    assert set(_native_build.CFLAGS) >= set(_native_build.BASE_CFLAGS)
    # What each builder passes to set_source (cffi keeps it as (name, source, ext, kwds)).
    for builder in (_native_build.ffibuilder, _bench_native_build.ffibuilder):
        assert builder._assigned_source[3]["extra_compile_args"] == _native_build.CFLAGS


def test_a_call_without_prototype_does_not_compile(tmp_path: Path) -> None:
    """The flags catch what GCC 14 refuses (here on any GCC): a call through an implicit int."""
    _need_toolchain()
    source = tmp_path / "implicit.c"
    source.write_text("long f(void) { return g(1); }\n")
    result = _compile(source, tmp_path / "implicit.o")
    assert result.returncode != 0
    assert "implicit" in result.stderr


def test_runtime_functions_are_all_declared_in_ue_h(objects: dict[str, Path]) -> None:
    defined = _external_functions([objects[name] for name in RUNTIME_SOURCES])
    # Every function the header promises exists, and every external one is in the header...
    assert RUNTIME_API.issubset(defined), (
        f"declared in ue.h, defined nowhere: {RUNTIME_API - defined}"
    )
    internal = defined - RUNTIME_API
    # ...except the few shared between the runtime's own files, declared in the private header.
    text = INTERNAL_HEADER.read_text()
    undeclared = {name for name in internal if not re.search(rf"\b{name}\s*\(", text)}
    assert not undeclared, f"external functions declared in no header: {sorted(undeclared)}"
    assert internal == INTERNAL


def test_internal_header_really_declares_them(tmp_path: Path) -> None:
    """The private header compiles, and taking each internal function's address through it
    works (a name it did not declare would be an undeclared identifier)."""
    _need_toolchain()
    probe = tmp_path / "probe.c"
    addresses = ", ".join(f"(const void *)&{name}" for name in sorted(INTERNAL))
    probe.write_text(f'#include "ue_internal.h"\nconst void *const probes[] = {{ {addresses} }};\n')
    result = _compile(probe, tmp_path / "probe.o")
    assert result.returncode == 0, result.stderr


def test_bench_functions_are_declared_in_ue_bench_h(objects: dict[str, Path]) -> None:
    defined = _external_functions([objects[name] for name in BENCH_SOURCES])
    assert defined == BENCH_API


def test_producers_are_not_in_the_runtime_module() -> None:
    assert not BENCH_API & RUNTIME_API
    runtime_names = set(dir(runtime_lib))
    assert RUNTIME_API.issubset(runtime_names)
    assert not BENCH_API & runtime_names, "benchmark code compiled into the runtime module"
    assert BENCH_API.issubset(dir(bench_lib))


def test_built_modules_match_their_headers() -> None:
    """The compiled .so files export exactly the functions of their sources: a module built
    from other sources (a stale build) fails here."""
    _need_toolchain()

    def exported(path: str) -> set[str]:
        result = subprocess.run(
            [NM or "nm", "-D", "--defined-only", "-P", path],
            capture_output=True,
            text=True,
            check=True,
        )
        return {
            line.split()[0]
            for line in result.stdout.splitlines()
            if line.startswith("ue_") and line.split()[1] == "T"
        }

    assert exported(runtime_module.__file__) == RUNTIME_API | INTERNAL
    assert exported(bench_module.__file__) == BENCH_API


@pytest.mark.parametrize(
    "builder", [_native_build, _bench_native_build], ids=["_native", "_bench_native"]
)
def test_cffi_generated_code_compiles_with_the_flags(builder: ModuleType, tmp_path: Path) -> None:
    _need_toolchain()
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        pytest.skip(f"no Python.h under {include} (the module was built elsewhere)")
    generated = tmp_path / "module.c"
    builder.ffibuilder.emit_c_code(str(generated))
    result = _compile(generated, tmp_path / "module.o", f"-I{include}")
    assert result.returncode == 0, result.stderr


def test_runtime_table_is_the_runtime_functions() -> None:
    """The bench module reaches the consumer and emulator through these pointers: they must
    be the functions of the loaded runtime module (the ones Python calls), not copies."""
    # dlopen of a loaded object returns that object: its symbols are the running code.
    loaded = ctypes.CDLL(runtime_module.__file__)
    table = runtime_lib.ue_runtime_table()
    for field, name in (
        ("consumer_init", "ue_consumer_init"),
        ("drain", "ue_drain"),
        ("emu_inject", "ue_emu_inject"),
    ):
        address = ctypes.cast(getattr(loaded, name), ctypes.c_void_p).value
        assert int(ffi.cast("uintptr_t", getattr(table, field))) == address, field


# ---- the header reader: what the builders accept, and that they refuse the rest loudly ----


def _header(tmp_path: Path, region: str) -> Path:
    path = tmp_path / "t.h"
    path.write_text(
        "#ifndef T_H\n#define T_H\n#include <stdint.h>\n/* cdef: begin */\n"
        + region
        + "/* cdef: end */\n#endif\n"
    )
    return path


def test_reader_hides_private_members_and_defers_constants(tmp_path: Path) -> None:
    path = _header(
        tmp_path,
        (
            "#define T_VERSION 3 /* bumped on change */\n"
            "struct t {\n\t/* private: */\n\tint hidden;\n\tstruct { int x; } nested;\n"
            "\t/* public: */\n\tint shown; // read by Python\n"
            "\t/* private: */\n\tvolatile int lock;\n};\n"
            "int t_get(const struct t *p);\n"
        ),
    )
    text = _native_build.read_cdef(path)
    assert "#define T_VERSION ...\n" in text
    assert "hidden" not in text and "nested" not in text and "lock" not in text
    assert re.search(r"struct t \{\s*\.\.\.;\s*int shown;\s*\.\.\.;\s*\};", text)
    assert "/*" not in text and "//" not in text
    # Line numbers survive: t_get is on the header's line 15.
    assert text.split("\n")[14].startswith("int t_get(")
    builder = FFI()
    _native_build.cdef_from_header(builder, path)
    assert _native_build.declared_functions(builder) == ["t_get"]


@pytest.mark.parametrize(
    "line",
    ['#include "x.h"', "#ifdef X", "#define MAX(a, b) a", "#define EMPTY", "#define LONG 1 + \\"],
)
def test_reader_refuses_other_preprocessor_lines(tmp_path: Path, line: str) -> None:
    path = _header(tmp_path, f"int ok(void);\n{line}\n")
    with pytest.raises(ValueError, match=r"t\.h:6: only one-line object-like #defines"):
        _native_build.read_cdef(path)


def test_reader_needs_exactly_one_region(tmp_path: Path) -> None:
    path = tmp_path / "none.h"
    path.write_text("int f(void);\n")
    with pytest.raises(ValueError, match="cdef: begin"):
        _native_build.read_cdef(path)
    path.write_text("/* cdef: end */\nint f(void);\n/* cdef: begin */\n")
    with pytest.raises(ValueError, match="cdef: begin"):
        _native_build.read_cdef(path)


def test_reader_refuses_unbalanced_access_markers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="public: without a private:"):
        _native_build.read_cdef(_header(tmp_path, "struct s { /* public: */ int a; };\n"))
    with pytest.raises(ValueError, match="never ends"):
        _native_build.read_cdef(_header(tmp_path, "struct s { /* private: */ int a;\n"))


def test_builder_names_the_header_line_cffi_cannot_parse(tmp_path: Path) -> None:
    path = _header(tmp_path, "int ok(void);\nint broken(int;\n")
    with pytest.raises(CDefError, match=r"t\.h:6:"):
        _native_build.cdef_from_header(FFI(), path)


def test_builder_refuses_a_region_without_functions(tmp_path: Path) -> None:
    with pytest.raises(CDefError, match="declares no function"):
        _native_build.cdef_from_header(FFI(), _header(tmp_path, "struct only { int a; };\n"))
