"""Python entrypoints (`package.module:function`): only the workspace's own code runs.

Python variants, python metrics and external trainers name a function that the daemon
calls. An entrypoint may only name a module that lies inside the workspace, or inside a
directory listed under `python_path:` in `shadowzoo.yaml`: a spec, a config or an admin API
call can never make the daemon run `subprocess:run` or any other installed module.
`check_entrypoint` finds the module without running any code, so specs are validated
safely; `load_entrypoint` imports exactly the file it found.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from typing import Any

from registry.errors import ConfigError

ENTRYPOINT_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
ENTRYPOINT_RULE = "expected 'package.module:function'"


def check_entrypoint(entrypoint: str, roots: Sequence[Path]) -> list[ModuleSpec]:
    """The specs of the module and of each package above it, all found under `roots`.

    Nothing is imported: each part is looked up as a file below the one before it.
    """
    if not ENTRYPOINT_RE.match(entrypoint):
        raise ConfigError(f"{entrypoint!r}: {ENTRYPOINT_RULE}")
    parts = entrypoint.partition(":")[0].split(".")
    search: list[str] | None = [str(root) for root in roots]
    specs: list[ModuleSpec] = []
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        spec = PathFinder.find_spec(name, search) if search is not None else None
        if spec is None:
            places = ", ".join(str(root) for root in roots)
            raise ConfigError(
                f"{entrypoint!r}: no module {name!r} inside the workspace or its python_path ({places}); "
                "python entrypoints may only name the workspace's own modules"
            )
        if spec.loader is None:
            raise ConfigError(f"{entrypoint!r}: {name!r} is a directory without __init__.py; make it a package")
        _require_inside(entrypoint, spec, roots)
        if depth == 1:
            _require_inside(entrypoint, _importable(name) or spec, roots, taken=True)
        specs.append(spec)
        search = list(spec.submodule_search_locations or []) or None
    return specs


_IMPORTING = threading.RLock()


def load_entrypoint(entrypoint: str, roots: Sequence[Path]) -> Callable[..., Any]:
    """The function `entrypoint` names, imported from the file `check_entrypoint` found."""
    specs = check_entrypoint(entrypoint, roots)
    module_name, _, function_name = entrypoint.partition(":")
    for root in roots:
        if str(root) not in sys.path:
            sys.path.append(str(root))  # so the workspace's modules can import each other
    try:
        with _IMPORTING:  # another thread must never see the module half executed
            _import_top(entrypoint, specs[0], roots)
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the workspace's code may fail to import in any way
        raise ConfigError(f"{entrypoint!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    _require_inside(entrypoint, module.__spec__, roots)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"{entrypoint!r}: module {module_name!r} has no function {function_name!r}")
    return function


def _importable(name: str) -> ModuleSpec | None:
    """What `import name` of a top-level module would load in this process (nothing is run)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _import_top(entrypoint: str, spec: ModuleSpec, roots: Sequence[Path]) -> None:
    """Import the top-level module from its found file, unless that very module is loaded."""
    loaded = sys.modules.get(spec.name)
    if loaded is not None:
        _require_inside(entrypoint, loaded.__spec__, roots, taken=True)
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise


def _require_inside(entrypoint: str, spec: ModuleSpec | None, roots: Sequence[Path], taken: bool = False) -> None:
    """Refuse a module whose file (or package directories) lie outside every root."""
    places = [Path(spec.origin)] if spec is not None and spec.origin and spec.has_location else []
    if spec is not None and not places:
        places = [Path(p) for p in spec.submodule_search_locations or []]
    resolved_roots = [root.resolve() for root in roots]
    outside = [p.resolve() for p in places if not any(p.resolve().is_relative_to(root) for root in resolved_roots)]
    if outside or not places:
        name = spec.name if spec is not None else entrypoint.partition(":")[0]
        where = outside[0] if outside else "no file"
        hint = "; give the workspace's module another name" if taken else ""
        raise ConfigError(
            f"{entrypoint!r}: module {name!r} is {where}, outside the workspace and its python_path{hint}"
        )
