"""What only setup.py can do for tardis-netadapter; the metadata is in pyproject.toml.

drone_scripts/ and configs/ live at the top level of the repository (for
reviewers, shellcheck and operators reading a checkout) but are installed as
``tardis_netadapter/drone_scripts`` (the renderer reads its templates and bash
libraries from there) and ``tardis_netadapter/configs`` (the example
configurations, for `tardis-netadapter check`/`render`). A ``package_dir``
mapping of data directories without ``__init__.py`` cannot be said in
pyproject.toml's declarative form together with automatic discovery of the
rest, hence this file. The lab is a separate distribution (lab/) and is
excluded here.
"""

from setuptools import find_packages, setup

#: top-level data directories installed inside the package
DATA_PACKAGES = {
    "tardis_netadapter.drone_scripts": "drone_scripts",
    "tardis_netadapter.configs": "configs",
}

setup(
    packages=find_packages(include=["tardis_netadapter", "tardis_netadapter.*"])
    # the data directories have no __init__.py: name them, or package_dir
    # alone installs nothing
    + sorted(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={
        "tardis_netadapter.drone_scripts": ["*", "**/*"],
        "tardis_netadapter.configs": ["*.yml"],
    },
    include_package_data=True,
)
