"""Make ``adapter: NetSlurm`` resolvable by TARDIS, then build TARDIS's own pool.

TARDIS finds site adapters only as
``import_module(f"tardis.adapters.sites.{name.lower()}")`` + ``f"{name}Adapter"``
and has no plugin hook. :func:`register` puts this package's adapter module
into ``sys.modules`` under ``tardis.adapters.sites.netslurm``; ``import_module``
returns a module found there without searching the file system.

Why a ``sys.modules`` alias rather than an import hook (a ``MetaPathFinder``)
or a file inside the installed tardis package: it is one idempotent line of
process-local state, done right before TARDIS looks the adapter up, it cannot
shadow any module TARDIS ships (it refuses to replace one), and nothing is
written into another distribution's files. An import hook would add machinery
for the same effect and still need to be installed at the same moment.

Two ways to use it in a cobald.yml (docs/adapter.md):

* ``__type__: tardis_netadapter.poolfactory.create_composite_pool`` as the last
  pipeline element; the ``tardis:`` section is loaded before the pipeline.
* the YAML tag ``!NetadapterPoolFactory`` (entry point
  ``cobald.config.yaml_constructors``). YAML tags are built while the file is
  parsed, before the ``tardis:`` section is loaded; so the tag returns a cobald
  ``Partial`` that the pipeline constructs later, exactly like
  ``!LinearController``. It works with an inline ``tardis:`` section and with
  ``configuration: tardis.yml`` alike.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

from cobald.composite.weighted import WeightedComposite
from cobald.interfaces import Partial

ALIAS = "tardis.adapters.sites.netslurm"
ADAPTER_MODULE = "tardis_netadapter.siteadapter"


def register() -> None:
    """Make ``tardis.adapters.sites.netslurm`` resolve to our adapter module (idempotent)."""
    sites = importlib.import_module("tardis.adapters.sites")
    module = importlib.import_module(ADAPTER_MODULE)
    existing = sys.modules.get(ALIAS)
    if existing is not None and existing is not module:
        raise ImportError(
            f"{ALIAS} is already a different module ({existing!r}); "
            "refusing to replace it"
        )
    sys.modules[ALIAS] = module
    sites.netslurm = module  # attribute access on the package, as after a real import


def create_composite_pool(configuration: Optional[str] = None) -> WeightedComposite:
    """TARDIS's ``create_composite_pool`` with the NetSlurm adapter registered first."""
    register()
    from tardis.resources.poolfactory import create_composite_pool as tardis_factory

    return tardis_factory(configuration)


def _deferred(*args, **kwargs) -> Partial:
    """What the YAML tag builds: the factory call, deferred until the pipeline is built."""
    return Partial(create_composite_pool, *args, __leaf__=True, **kwargs)


# cobald's tag loader uses ``entry_point.s`` when it exists (as for Controllers)
create_composite_pool.s = _deferred  # type: ignore[attr-defined]
