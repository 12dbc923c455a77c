"""The appliance's pure core: wire formats, the fast classifier, the claim machine.

Nothing in this package performs I/O or reads a clock. Time enters as an
argument (`now`, in seconds), and the I/O shell in `appliance/` carries out
what the core asks for.
"""
