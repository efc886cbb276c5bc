"""What the code imports, the package declares: a plain install runs everything but the lab.

Every third-party module that ``src/plunder`` imports must come from a distribution named in
``[project.dependencies]``, except in ``plunder.lab``, which may use the ``lab`` extra too; the
``dev`` extra is for the tests and linters only and must not be needed by the code. A real
install without the dev extra is checked by ``make install-check`` (part of ``make test``).
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "src" / "plunder"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    names = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in requirements}
    return {name.lower().replace("_", "-") for name in names}


def _extra(name: str) -> set[str]:
    return _names(PROJECT["optional-dependencies"].get(name, []))


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path``, outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"plunder", "__future__"}


@functools.cache
def _provided() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def _distributions(module: str) -> set[str]:
    provided = _provided().get(module, [])
    return {name.lower().replace("_", "-") for name in provided}


def undeclared() -> dict[str, str]:
    """Module → where it is imported, for each import no allowed distribution provides."""
    core = _names(PROJECT["dependencies"])
    missing: dict[str, str] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE.parent)
        allowed = core | _extra("lab") if relative.parts[1] == "lab" else core
        for module in sorted(_imports(path)):
            if not _distributions(module) & allowed:
                missing.setdefault(module, str(relative))
    return missing


def test_every_import_of_the_code_is_declared_outside_the_dev_extra() -> None:
    assert undeclared() == {}


def test_the_lab_has_an_extra_of_its_own_and_dev_includes_it() -> None:
    assert {"sushy-tools", "virtualbmc", "libvirt-python", "bcrypt"} <= _extra("lab")
    assert "cluster-api-plunder" in _extra("dev")
    assert any(
        r.startswith("cluster-api-plunder[lab]") for r in PROJECT["optional-dependencies"]["dev"]
    )


def test_every_declared_version_is_pinned_in_the_constraints() -> None:
    pins = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for requirement in [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["lab"]]:
        name = _names([requirement]).pop()
        version = requirement.split("==")[1].split()[0].strip('",')
        assert pins.get(name) == version, requirement
