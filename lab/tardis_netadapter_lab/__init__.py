"""The lab: a simulated network-restricted HPC site built from network namespaces.

See docs/lab.md. Typical use::

    from tardis_netadapter_lab import Lab
    with Lab(name="tnlab", workers=2, idle_timeout=30) as lab:
        lab.run("login", ["sbatch", "--wrap", "hostname"], user=lab.drone_user)
"""

from .layout import DEFAULT_NAME, LabLayout
from .site import Lab, LabError, teardown

__all__ = ["DEFAULT_NAME", "Lab", "LabError", "LabLayout", "teardown"]
