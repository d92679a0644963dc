"""Packaging for tardis-netadapter: a COBalD/TARDIS site adapter for restricted HPC sites."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def drone_script_files() -> list[str]:
    """Ship the top-level drone_scripts/ inside the package as data."""
    return [
        str(path.relative_to(HERE))
        for path in sorted((HERE / "drone_scripts").rglob("*"))
        if path.is_file()
    ]


setup(
    name="tardis-netadapter",
    version="0.1.0",
    description=(
        "COBalD/TARDIS site adapter that runs HTCondor drones on "
        "network-restricted HPC sites through supervised tunnels"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["tardis_netadapter", "tardis_netadapter.*"])
    # drone_scripts/ has no __init__.py: name it, or package_dir alone installs nothing
    + ["tardis_netadapter.drone_scripts"],
    # drone_scripts/ lives at the top level for reviewers and shellcheck; it is
    # installed as tardis_netadapter/drone_scripts so the renderer finds it.
    package_dir={"tardis_netadapter.drone_scripts": "drone_scripts"},
    package_data={"tardis_netadapter.drone_scripts": ["*", "**/*"]},
    include_package_data=True,
    install_requires=[
        "cobald-tardis>=0.9,<0.10",
        "cobald>=0.14",
        "asyncssh>=2.13",
        "pyyaml>=6",
        "jinja2>=3.1",
        "htcondor>=24",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "ruff==0.17.6",
        ],
    },
    entry_points={
        "console_scripts": [
            "tardis-netadapter = tardis_netadapter.cli:main",
        ],
        "cobald.config.yaml_constructors": [
            "NetadapterPoolFactory = tardis_netadapter.poolfactory:create_composite_pool",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
