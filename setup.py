"""Maps the folders `runtime/`, `router/` and `operator/` to `loraplex.runtime`,
`loraplex.router` and `loraplex.operator`.

`operator` is a standard-library name, so `operator/` has no `__init__.py`: from the
repository root it is at most a namespace portion, which the standard library's module
always beats, and `loraplex.operator` is a namespace package. In the checkout,
`loraplex/operator` is a link to `../operator`, so that an editable install finds that
namespace too (setuptools' editable finder maps only folders with an `__init__.py`).
pyproject.toml holds everything else.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "loraplex": "loraplex",
    "loraplex.runtime": "runtime",
    "loraplex.router": "router",
    "loraplex.operator": "operator",
}


def packages() -> list[str]:
    names = []
    for package, folder in PACKAGE_DIRS.items():
        names.append(package)
        names += [f"{package}.{sub}" for sub in find_packages(folder, exclude=["operator*"])]
    return names


setup(packages=packages(), package_dir=PACKAGE_DIRS,
      # the CPU kernels' sources, compiled on the machine that serves (kernels.cpu_native)
      package_data={"loraplex.runtime.kernels": ["*.c", "*.h"]})
