"""The shape of the package: layers, one definition of each public class,
close codes in one place, faces on the connection's declared interface.

These read the source (with ``ast``) and the imported modules; they fail when
someone adds an upward import, an import circle, a literal close code, or a
face that reaches into the connection's private names.
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest

import fastws
import fastws.types
from fastws.faces import callback

PACKAGE = Path(fastws.__file__).parent
COMPILED_LINKS = {"protocol/_server_c.py", "connection/_connection_c.py"}

# Each layer may import the layers listed after it, never one before it.
LAYERS = ["cli", "supervisor", "monitor", "bench", "server", "dashboard", "metrics", "rooms", "faces", "connection", "protocol", "codec", "base"]
BASE = {"types", "exceptions", "config", "_select", "_version"}


def _sources() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in COMPILED_LINKS or "__pycache__" in rel:
            continue
        module = "fastws." + rel[:-3].replace("/", ".")
        out[module.removesuffix(".__init__")] = path
    return out


def _runtime_imports(module: str, path: Path) -> set[str]:
    """fastws modules imported at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("fastws"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("fastws"):
                    # `from . import x` imports the submodule x, not the
                    # package's own names.
                    subs = {f"{target}.{a.name}" for a in child.names} & SOURCES.keys()
                    found.update(subs if len(subs) == len(child.names) else subs | {target})
            visit(child)

    visit(tree)
    found.discard(module)
    return {m for m in found if m in SOURCES or m == "fastws"}


SOURCES = _sources()


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    name = parts[1]
    if name in BASE:
        return "base"
    if name in ("demo", "__main__"):
        return "app"
    return name


def test_every_module_belongs_to_a_layer() -> None:
    for module in SOURCES:
        assert _layer(module) in LAYERS + ["api", "app"], module


def test_imports_point_down_only() -> None:
    bad = []
    for module, path in SOURCES.items():
        layer = _layer(module)
        if layer in ("api", "app"):
            continue
        for target in _runtime_imports(module, path):
            tlayer = _layer(target)
            if tlayer == "api" or (tlayer in LAYERS and LAYERS.index(tlayer) < LAYERS.index(layer)):
                bad.append(f"{module} ({layer}) imports {target} ({tlayer})")
    assert not bad, "\n".join(bad)


def test_no_import_circles() -> None:
    graph = {m: _runtime_imports(m, p) - {"fastws"} for m, p in SOURCES.items()}
    # A package's __init__ importing its own submodules is not a circle of
    # layers; drop those edges (package -> child) before looking for cycles.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for module in graph:
        if module not in state:
            dfs(module)


def test_selector_imports_nothing_of_ours() -> None:
    assert _runtime_imports("fastws._select", SOURCES["fastws._select"]) == set()


def test_public_classes_are_defined_once() -> None:
    assert fastws.State is fastws.types.State
    assert fastws.CloseCode is fastws.types.CloseCode
    assert fastws.Close is fastws.types.Close
    assert fastws.Handler is callback.Handler
    assert fastws.ProtocolError is fastws.exceptions.ProtocolError
    assert fastws.codec.frame.ProtocolError is fastws.ProtocolError
    # A compiled module (or its twin) defines no public class of its own
    # beyond the ones it exists for (the protocol also defines the counters
    # it bumps per message: they must be a compiled class for that).
    from fastws.connection import _connection_py
    from fastws.protocol import _server_py

    modules = [(_server_py, {"ServerProtocol", "Stats"}), (_connection_py, {"Connection"})]
    if fastws.COMPILED:
        from fastws.connection import _connection_c
        from fastws.protocol import _server_c

        modules += [(_server_c, {"ServerProtocol", "Stats"}), (_connection_c, {"Connection"})]
    for module, own in modules:
        defined = {
            name
            for name, value in vars(module).items()
            if isinstance(value, type) and getattr(value, "__module__", None) == module.__name__
        }
        assert defined == own, (module.__name__, defined)


def test_the_picked_build_is_consistent() -> None:
    from fastws.connection import Connection
    from fastws.protocol import ServerProtocol

    compiled = fastws.COMPILED
    assert Connection.__module__.endswith("_c") is compiled
    assert ServerProtocol.__module__.endswith("_c") is compiled
    assert fastws.codec.frame.__name__.endswith("_py") is not compiled
    assert fastws.Connection is Connection


def _int_constants(path: Path) -> list[tuple[int, int, str]]:
    """Integer literals 1000-1015 (close codes) outside the codec's range
    check. A count written with a digit separator (``1_000``) is no close
    code: nobody writes 1_000 for Normal Closure."""
    source = path.read_text()
    tree = ast.parse(source)
    hits = []
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_valid_close_code":
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and type(node.value) is int
            and 1000 <= node.value <= 1015
            and id(node) not in skip
            and "_" not in (ast.get_source_segment(source, node) or "")
        ):
            hits.append((node.lineno, node.value, path.name))
    return hits


def test_close_codes_live_in_closecode() -> None:
    hits = []
    for module, path in SOURCES.items():
        if module == "fastws.types":
            continue
        hits += [f"{path.relative_to(PACKAGE)}:{line}: {value}" for line, value, _ in _int_constants(path)]
    pyx = PACKAGE / "codec" / "_frame.pyx"
    for lineno, line in enumerate(pyx.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if ("_fail(" in code or "ProtocolError(" in code) and any(str(c) in code for c in range(1000, 1016)):
            hits.append(f"codec/_frame.pyx:{lineno}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_faces_use_only_the_declared_connection_interface() -> None:
    """No face touches a private name of the connection (``conn._x``,
    ``self._conn._x``), and no face relies on a duck-typed hook."""
    from types import SimpleNamespace

    # An instance: the twin declares some attributes in __init__.
    conn = fastws.Connection(SimpleNamespace(config=fastws.Config(), stats=None))  # type: ignore[arg-type]
    declared = {name for name in dir(conn) if not name.startswith("_")}
    bad = []
    for path in (PACKAGE / "faces").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            target = ast.unparse(node.value)
            if target in ("conn", "self._conn", "ws.connection", "self.connection"):
                if node.attr.startswith("_") or node.attr not in declared:
                    bad.append(f"{path.name}:{node.lineno}: {target}.{node.attr}")
    assert not bad, "\n".join(bad)
    text = "".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert "_fastws_bind" not in text and "has_pending" not in text


def test_each_file_says_what_it_owns() -> None:
    for module, path in SOURCES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{module} has no opening docstring"


def test_public_api_is_curated() -> None:
    for name in fastws.__all__:
        assert hasattr(fastws, name), name
    assert not [n for n in fastws.__all__ if n.startswith("_") and n != "__version__"]
    # Every public class and function has a docstring.
    for name in fastws.__all__:
        obj = getattr(fastws, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


@pytest.mark.skipif(os.name != "posix", reason="links")
def test_compiled_sources_are_links_to_their_twins() -> None:
    for rel in COMPILED_LINKS:
        path = PACKAGE / rel
        assert path.is_symlink(), rel
        assert os.readlink(path) == path.name.replace("_c.py", "_py.py")


@pytest.mark.skipif(not fastws.COMPILED, reason="needs the compiled build to remove one module of it")
@pytest.mark.parametrize("missing", ["protocol/_server_c", "connection/_connection_c", "codec/_frame"])
def test_a_missing_build_means_all_twins(tmp_path: Path, missing: str) -> None:
    """Without one extension, every module is the twin (a compiled layer
    cannot drive a twin below it), COMPILED is False, and one warning says why;
    the link beside a missing compiled module never passes for it."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "fastws"
    shutil.copytree(PACKAGE, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for so in copy.glob(missing + ".*"):
        if so.suffix in (".so", ".pyd"):
            so.unlink()
    code = (
        "import fastws, fastws.codec, fastws.protocol;"
        "print(fastws.__file__, fastws.COMPILED, fastws.Connection.__module__,"
        " fastws.protocol.ServerProtocol.__module__, fastws.codec.frame.__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTWS_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    where, compiled, conn, proto, frame = res.stdout.split()
    assert where == str(copy / "__init__.py")
    assert (compiled, conn, proto, frame) == (
        "False",
        "fastws.connection._connection_py",
        "fastws.protocol._server_py",
        "fastws.codec._frame_py",
    )
    assert "compiled modules not built (fastws." + missing.replace("/", ".") + ")" in res.stderr


def test_every_package_is_installed() -> None:
    """pyproject.toml lists packages by name: a new subpackage missing from
    the list works in an editable install and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "fastws" + ("." + ".".join(init.parent.relative_to(PACKAGE).parts) if init.parent != PACKAGE else "")
        for init in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found == listed, (found - listed, listed - found)
