"""Encrypted Client Hello: when is the visible SNI only a cover name?

Browsers send an ECH extension on every ClientHello (GREASE) whether or not they really encrypt
the inner hello, and the two are indistinguishable on the wire by design. So the extension alone
does not make the SNI a cover name. It is one when DNS shows the client resolved a different name
to the address it connected to, or when it is a provider's published ECH public name.
"""
from __future__ import annotations

# public_name values of widely deployed ECH configurations
KNOWN_PUBLIC_NAMES = frozenset({"cloudflare-ech.com", "encryptedsni.com", "public.example.com"})


def is_cover_name(server_name: str, resolved_names: tuple[str, ...] = ()) -> bool:
    """True when `server_name` (from a hello carrying the ECH extension) is not the destination."""
    name = server_name.lower().rstrip(".")
    if name in KNOWN_PUBLIC_NAMES:
        return True
    return bool(resolved_names) and name not in resolved_names
