"""Maps the folders `runtime/` and `operator/` to `loraplex.runtime` and `loraplex.operator`.

`operator` is a standard-library name, so the folders cannot be packages of their own;
pyproject.toml holds everything else.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "loraplex": "loraplex",
    "loraplex.runtime": "runtime",
    "loraplex.operator": "operator",
}


def packages() -> list[str]:
    names = []
    for package, folder in PACKAGE_DIRS.items():
        names.append(package)
        names += [f"{package}.{sub}" for sub in find_packages(folder)]
    return names


setup(packages=packages(), package_dir=PACKAGE_DIRS)
