"""Import every module of the installed ``plunder`` package (run by ``make install-check``).

Run with the Python of a fresh install, not the development one: the script's folder (not the
repository's ``src``) is on ``sys.path``, so what is imported is what the install holds.
``--without PREFIX`` skips the modules under it (the lab, when its extra is not installed).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback


def main() -> int:
    """Import each module; report those that fail and why."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--without", action="append", default=[])
    args = parser.parse_args()
    import plunder

    if "site-packages" not in (plunder.__file__ or ""):
        print(f"install-check: plunder comes from {plunder.__file__}, not an install")
        return 2
    failed = checked = 0
    names = [m.name for m in pkgutil.walk_packages(plunder.__path__, "plunder.")]
    for name in ["plunder", *names]:
        if any(name == p or name.startswith(f"{p}.") for p in args.without):
            continue
        checked += 1
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - report every module that does not import
            failed += 1
            print(f"install-check: {name} does not import:", file=sys.stderr)
            traceback.print_exc(limit=1)
    print(f"install-check: {checked} modules, {failed} failed (without: {args.without or '-'})")
    missing = missing_package_data()
    for path in missing:
        print(f"install-check: package data {path} is not in the install", file=sys.stderr)
    return 1 if failed or missing else 0


def missing_package_data() -> list[str]:
    """The files read at run time (``[tool.setuptools.package-data]``) that the install lacks."""
    from importlib import resources

    from plunder.dashboard import server

    wanted = [("plunder", "py.typed"), ("plunder", "agent/agent.sh")]
    wanted += [("plunder.dashboard", f"static/{name}") for name in server.STATIC_FILES]
    return [
        f"{package}:{path}"
        for package, path in wanted
        if not resources.files(package).joinpath(path).is_file()
    ]


if __name__ == "__main__":
    sys.exit(main())
