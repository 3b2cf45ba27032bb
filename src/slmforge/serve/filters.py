"""The content filter hook, defined in `safety/verdicts.py` (below the servers and the router
that call it) and re-exported here for the serve modules."""

from slmforge.safety.verdicts import ContentFilter, FilterVerdict, NoFilter

__all__ = ["ContentFilter", "FilterVerdict", "NoFilter"]
