"""Make every batch driver's ``adapter:`` name resolvable by TARDIS, then build its pool.

TARDIS finds site adapters only as
``import_module(f"tardis.adapters.sites.{name.lower()}")`` + ``f"{name}Adapter"``
and has no plugin hook. :func:`register` puts, for every registered batch
driver (``tardis_netadapter.batch.DRIVERS``: ``NetSlurm``, ``NetGridEngine``), a module
holding its adapter class into ``sys.modules`` under
``tardis.adapters.sites.<name in lower case>``; ``import_module`` returns a
module found there without searching the file system.

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
import types
from typing import Optional

from cobald.composite.weighted import WeightedComposite
from cobald.interfaces import Partial

SITES_PACKAGE = "tardis.adapters.sites"
#: the alias of the built-in driver (``adapter: NetSlurm``)
ALIAS = f"{SITES_PACKAGE}.netslurm"
#: marks the alias modules this factory made, so re-registering is idempotent
_MADE_HERE = "__tardis_netadapter__"


def register() -> None:
    """Make ``tardis.adapters.sites.<name>`` resolve for every driver (idempotent)."""
    from .batch import DRIVERS
    from .siteadapter import adapter_class

    sites = importlib.import_module(SITES_PACKAGE)
    for adapter_name, driver in DRIVERS.items():
        alias = f"{SITES_PACKAGE}.{adapter_name.lower()}"
        existing = sys.modules.get(alias)
        if existing is not None and not getattr(existing, _MADE_HERE, False):
            raise ImportError(
                f"{alias} is already a different module ({existing!r}); "
                "refusing to replace it"
            )
        class_name = f"{adapter_name}Adapter"
        if existing is not None and getattr(existing, class_name, None) is not None:
            continue
        module = types.ModuleType(alias, f"tardis-netadapter's {adapter_name}")
        setattr(module, class_name, adapter_class(driver))
        setattr(module, _MADE_HERE, True)
        sys.modules[alias] = module
        # attribute access on the package, as after a real import
        setattr(sites, adapter_name.lower(), module)


def create_composite_pool(configuration: Optional[str] = None) -> WeightedComposite:
    """TARDIS's ``create_composite_pool`` with every driver's adapter registered first."""
    register()
    from tardis.resources.poolfactory import create_composite_pool as tardis_factory

    return tardis_factory(configuration)


def _deferred(*args, **kwargs) -> Partial:
    """What the YAML tag builds: the factory call, deferred until the pipeline is built."""
    return Partial(create_composite_pool, *args, __leaf__=True, **kwargs)


# cobald's tag loader uses ``entry_point.s`` when it exists (as for Controllers)
create_composite_pool.s = _deferred  # type: ignore[attr-defined]
