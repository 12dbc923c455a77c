"""protocols.bucket_hash against the kernel's own jhash: the bucket Python
computes for a client address and port is the one nftables puts it in."""

from __future__ import annotations

import json

from lab.namespaces import Lab
from protocols.bucket_hash import bucket_of, cluster_seed

SENDER = """
import socket, sys
for port in range(int(sys.argv[1]), int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[3], port))
    s.sendto(b"x", ("127.0.0.9", 9))
    s.close()
"""


def test_python_computes_the_bucket_the_kernel_computes(lab_segment: Lab) -> None:
    node = lab_segment.clients[0]
    address = str(node.address)
    buckets = 1024
    seed = cluster_seed(bytes([10, 77, 0, 10]))
    # The same expression as the appliance's table, its result kept per port.
    script = lab_segment.directory / "bucket_check.nft"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        f"""
table ip bucket_check {{
    set seen {{ type mark . inet_service; flags dynamic; size 65536; }}
    chain out {{
        type filter hook output priority 0; policy accept;
        udp dport 9 meta mark set jhash ip saddr . th sport mod {buckets} seed {seed:#x}
        udp dport 9 add @seen {{ meta mark . udp sport }}
    }}
}}
"""
    )
    node.run(["nft", "-f", str(script)])
    node.run(["python3", "-c", SENDER, "20000", "20400", address])
    listed = node.run(["nft", "-j", "list", "set", "ip", "bucket_check", "seen"])
    listing = json.loads(listed.stdout)
    elements = [
        element["concat"]
        for entry in listing["nftables"]
        if "set" in entry
        for element in entry["set"].get("elem", ())
    ]
    assert len(elements) == 400
    packed = node.address.packed
    wrong = [
        (port, bucket, bucket_of(packed, port, buckets, seed))
        for bucket, port in elements
        if bucket_of(packed, port, buckets, seed) != bucket
    ]
    assert not wrong, wrong[:5]
    assert len({bucket for bucket, _ in elements}) > 300  # the ports spread over the buckets
