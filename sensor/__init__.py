"""phi-egress-sensor: finds protected health information leaving for ad and analytics vendors."""

__version__ = "0.1.0"
