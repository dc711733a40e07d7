"""One module per rule; `ALL_RULES` is the order they run in."""
from sensor.detect.rules import plaintext_phi, tracker_egress, tracker_payload, unreviewed_vendor

ALL_RULES = (tracker_egress, tracker_payload, plaintext_phi, unreviewed_vendor)
