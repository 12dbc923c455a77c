"""The data plane: the trio loop that reads the segment and the frames it writes.

- `loop`: drains the TAP in batches, feeds the claim machine, writes to TUN.
- `frames`: the frames the appliance sends (ARP replies, claim packets, resets).
"""
