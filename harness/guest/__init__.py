"""The guest that L1's KVM runs, behind one interface (harness.guest.base.Guest): today's Linux L2 with its ledger
(linux_l2) and the micro-guest VMM (micro).  The guest contract they share with the harness is
harness.guest.contract."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package stays light: harness.guest.contract is read by the config and the oracles
    from harness.guest.base import Guest


def guest_for(scenario) -> "Guest":
    """The guest a scenario asks for (its `guest` knob)."""
    if scenario.guest == "micro":
        from harness.guest.micro import MicroGuest
        return MicroGuest(scenario)
    from harness.guest.linux_l2 import LinuxL2
    return LinuxL2(scenario)

