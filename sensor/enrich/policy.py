"""The policy the detectors consult: the vendor catalog, the PHI asset inventory, the BAA registry
and the allow list, built from the configuration by `build_policy`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sensor.enrich.vendors import domain_suffixes, normalize_host

if TYPE_CHECKING:
    from sensor.enrich.assets import AssetInventory
    from sensor.enrich.baa import BaaRegistry
    from sensor.enrich.vendors import VendorCatalog


@dataclass(frozen=True, slots=True)
class Policy:
    catalog: VendorCatalog
    assets: AssetInventory
    baa: BaaRegistry
    allow: frozenset[str]

    def is_allowed(self, host: str) -> bool:
        """Whether a host is on the allow list (the listed domain or any subdomain)."""
        if not self.allow:  # none listed (the default): no name to walk
            return False
        return any(suffix in self.allow for suffix in domain_suffixes(normalize_host(host)))
