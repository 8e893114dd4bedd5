"""cffi API-mode builder for ``uring_epoll._native``, the runtime module.

The module's C interface is declared once, in ``csrc/ue.h``: this builder reads that header's
cdef region (:func:`read_cdef`) and hands it to cffi, so Python and C cannot disagree about a
prototype. Run by setuptools through ``cffi_modules`` in setup.py; the benchmark module's
builder (``_bench_native_build.py``) reuses the header reader and the compiler flags.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI, CDefError

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
HEADER = CSRC / "ue.h"
SOURCES = ["ring.c", "emu.c", "uring.c", "sys.c"]

#: Set to 1 (CI does) to build with -Werror. Users' builds only warn, so that a newer
#: compiler's new warning never stops ``pip install``; CI and the test suite compile every
#: source with -Werror, where a warning in this small C code has so far always been a bug.
WERROR_ENV = "URING_EPOLL_WERROR"

#: The -Werror= list is what GCC 14 refuses by default, spelled out so that older compilers
#: refuse it too (return-type stands for GCC 14's return-mismatch). -Wmissing-prototypes
#: warns of an external function with no prototype in sight: cffi calls nothing the headers
#: do not declare.
BASE_CFLAGS = [
    "-O2",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror=implicit-function-declaration",
    "-Werror=implicit-int",
    "-Werror=int-conversion",
    "-Werror=incompatible-pointer-types",
    "-Werror=return-type",
    "-Wmissing-prototypes",
    "-Wstrict-prototypes",
]
#: The same with every warning an error: what CI builds with, and what the tests compile with.
STRICT_CFLAGS = [*BASE_CFLAGS, "-Werror"]
#: Set to 1 to build with AddressSanitizer and UndefinedBehaviorSanitizer (tests/
#: test_sanitizers.py builds such a module in a temporary tree and runs the tests that drive
#: the C code against it). Python itself is not instrumented: load the ASan runtime first,
#: ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``, with ``ASAN_OPTIONS=detect_leaks=0``.
SANITIZE_ENV = "URING_EPOLL_SANITIZE"
#: Every undefined behaviour is an error (no recovery), and frames stay for the reports.
SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
]
_sanitize = os.environ.get(SANITIZE_ENV) == "1"
#: What this build uses.
CFLAGS = [
    *(STRICT_CFLAGS if os.environ.get(WERROR_ENV) == "1" else BASE_CFLAGS),
    *(SANITIZE_FLAGS if _sanitize else []),
]
#: Linker flags (the sanitizers' runtimes).
LDFLAGS = SANITIZE_FLAGS if _sanitize else []

BEGIN = "/* cdef: begin */"
END = "/* cdef: end */"

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_ACCESS = {"/* private: */": "@private@", "/* public: */": "@public@"}
_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)(?:\s+(\S.*))?$")


def _without_comments(text: str) -> str:
    """Comments removed (their newlines kept, so lines keep their numbers); the private: and
    public: markers become @private@ and @public@."""

    def replace(match: re.Match[str]) -> str:
        comment = match.group(0)
        return _ACCESS.get(comment, "\n" * comment.count("\n"))

    return _COMMENT.sub(replace, text)


def _hide_private(text: str, where: str) -> str:
    """Each ``@private@`` run of struct members (up to ``@public@`` or the struct's closing
    brace) becomes ``...;``: cffi takes those members' room and the offsets of the others
    from the compiler."""
    out: list[str] = []
    pos = 0
    while (start := text.find("@private@", pos)) >= 0:
        out.append(text[pos:start])
        depth, i = 0, start + len("@private@")
        while i < len(text):
            if text.startswith("@public@", i) and depth == 0:
                end, pos = i, i + len("@public@")
                break
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                if depth == 0:
                    end = pos = i
                    break
                depth -= 1
            i += 1
        else:
            raise ValueError(f"{where}: a private: section never ends")
        hidden = text[start:end]
        if "@private@" in hidden[1:]:
            raise ValueError(f"{where}: private: inside a private: section")
        out.append("...;" + "\n" * hidden.count("\n"))
    out.append(text[pos:])
    result = "".join(out)
    if "@public@" in result:
        raise ValueError(f"{where}: public: without a private: before it")
    return result


def read_cdef(header: Path) -> str:
    """The cdef text of *header*: what lies between its ``cdef: begin`` and ``cdef: end``
    lines, comments removed, private struct members as ``...;`` and each ``#define NAME
    value`` as ``#define NAME ...`` (cffi then takes the value from the compiler, which
    checks that it is an integer constant). Lines keep their numbers in the header, so a
    cffi error points at the header's line. Any other preprocessor line, a function-like
    macro or a missing marker is a ValueError: the builder never guesses."""
    lines = header.read_text().splitlines()
    begins = [n for n, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [n for n, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(f"{header}: needs one {BEGIN!r} line, then one {END!r} line")
    first = begins[0] + 1
    region = "\n".join(lines[first : ends[0]])
    text = _hide_private(_without_comments(region), str(header))
    out = []
    for number, line in enumerate(text.split("\n"), start=first + 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            match = _DEFINE.match(stripped)
            if not match or not match.group(2) or stripped.endswith("\\"):
                raise ValueError(
                    f"{header}:{number}: only one-line object-like #defines with a value "
                    f"belong in the cdef region: {stripped!r}"
                )
            line = f"#define {match.group(1)} ..."
        out.append(line)
    # Padding: cffi numbers the lines of what it is given; make those the header's.
    return "\n" * first + "\n".join(out) + "\n"


def declared_functions(ffi: FFI) -> list[str]:
    """Names of the functions declared in *ffi*'s cdef."""
    # cffi keeps its declarations as "function NAME", "struct NAME", ... keys (no public API
    # lists them).
    declarations = ffi._parser._declarations  # type: ignore[attr-defined,unused-ignore]
    return sorted(key.split(" ", 1)[1] for key in declarations if key.startswith("function "))


def cdef_from_header(ffi: FFI, header: Path) -> None:
    """``ffi.cdef`` of *header*'s cdef region; any error names the header and stops the build."""
    try:
        ffi.cdef(read_cdef(header))
    except CDefError as exc:
        # cffi's positions are the header's lines (read_cdef keeps them): say which file.
        where = str(exc).replace("<cdef source string>", str(header))
        raise CDefError(f"cannot use {header.name} as the cdef: {where}") from exc
    if not declared_functions(ffi):
        raise CDefError(f"{header.name}: the cdef region declares no function")


def module_prelude(module: str, header: str) -> str:
    """The C text cffi puts before its own code: the header, and the prototype of the module's
    init function, which Python.h does not declare (-Wmissing-prototypes)."""
    return f'#include "{header}"\n\nPyMODINIT_FUNC PyInit_{module}(void);\n'


def sources(names: list[str]) -> list[str]:
    """Source paths as setuptools wants them: relative to the project root."""
    return [str((CSRC / name).relative_to(HERE.parent)) for name in names]


ffibuilder = FFI()
cdef_from_header(ffibuilder, HEADER)
ffibuilder.set_source(
    "uring_epoll._native",
    module_prelude("_native", HEADER.name),
    sources=sources(SOURCES),
    include_dirs=[str(CSRC.relative_to(HERE.parent))],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
