"""A digest of a part's code, so that an edit to a built-in part changes what its case is.

A built-in part ships inside dqar-bench, whose version string does not move when a gate's
code does; without this digest `--resume` would keep an edited gate's old results as done
and `compare --strict` could not name the edit. The rule:

- the code of a part is the source file of the module that defines its class, plus every
  module of the same top-level package that this source imports (anywhere in the file,
  function-level imports included, since those are called too), followed transitively;
- a module is read from its file on disk (its import spec's origin), byte for byte;
- a package's `__init__` counts only where it is imported by name (`from dqar_bench import
  Gate` reads `dqar_bench/__init__.py`), not as the parent of every submodule;
- imports named by string (`importlib.import_module("...")`) are not followed: lazy
  loaders use them to stay light, and they never reach a part's computation.

The harness around a part (sampling loop, adapters) is not part of it: that is
dqar-bench's version in the identity. An edit to any module in a part's closure (the
`Gate` base class included) changes the digest, which is conservative: such a case is
rerun, never wrongly kept.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util

DIGEST_CHARS = 16
"""Hex characters kept: 64 bits, far past any chance collision between two edits."""


def code_digest(cls: type) -> str | None:
    """The digest of `cls`'s code (see the module docstring); None where its source cannot be read."""
    module = cls.__module__
    closure = module_closure(module, module.split(".")[0])
    if closure is None:
        return None
    h = hashlib.sha256()
    for name in sorted(closure):
        h.update(f"{name}\0{closure[name]}\0".encode())
    return h.hexdigest()[:DIGEST_CHARS]


def module_closure(module: str, package: str) -> dict[str, str] | None:
    """sha256 of every module of `package` that `module` reaches by imports, by name; None
    where `module` itself has no readable source (a built-in or frozen module)."""
    found: dict[str, str] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        source = module_source(name)
        if source is None:
            if name == module:
                return None
            continue
        found[name] = hashlib.sha256(source).hexdigest()
        pending.extend(i for i in imported_modules(name, source) if i.split(".")[0] == package)
    return found


@functools.cache
def module_source(name: str) -> bytes | None:
    """The bytes of a module's source file (cached: a process runs the code it imported)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        with open(spec.origin, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def imported_modules(name: str, source: bytes) -> list[str]:
    """The modules a source imports: `import a.b` names `a.b`; `from a import b` names `a.b`
    where that is a module, else `a` and, where `a` is imported and `b` is a class or
    function, the module that defines `b` (a package's re-export, even a lazy one).
    Relative imports are resolved against `name`; imports under `if TYPE_CHECKING:` never
    run and are skipped."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    is_package = (module_origin(name) or "").endswith("__init__.py")
    out: list[str] = []
    for node in _run_time_nodes(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and module_origin(sub) is not None:
                    out.append(sub)
                    continue
                out.append(base)
                defined_in = _defining_module(base, alias.name, name.split(".")[0])
                if defined_in is not None:
                    out.append(defined_in)
    return out


def _defining_module(module: str, attribute: str, package: str) -> str | None:
    """The module that defines `module.attribute` (a class or function re-exported by a
    package), importing `module` where it is of `package` (so the answer never depends on
    what this process happened to import before) and never a third-party one."""
    if module.split(".")[0] != package:
        return None
    try:
        value = getattr(importlib.import_module(module), attribute, None)
    except ImportError:  # a module that fails to import has no attribute to follow; its source still counts
        return None
    defined_in = getattr(value, "__module__", None) if isinstance(value, type) or callable(value) else None
    return defined_in if isinstance(defined_in, str) else None


def _run_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks."""
    found: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.cache
def module_origin(name: str) -> str | None:
    """Where a module's file is, or None where `name` is no module (an attribute of one)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    return spec.origin if spec is not None else None


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str | None:
    if level == 0:
        return module
    parts = name.split(".") if is_package else name.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        return None
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


def clear_caches() -> None:
    """Forget what was read, for a process (a test) that edits source files while it runs."""
    module_source.cache_clear()
    module_origin.cache_clear()
