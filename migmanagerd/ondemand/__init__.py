"""MIG on demand: requests, leases, allowed geometries and layout suggestions.

Pure parts (``geometries``, ``request``, ``suggest``) decide; ``leases`` and
``serve`` hold the only I/O (the state directory's lease file, the backend,
the run lock). See docs/ondemand.md.
"""
