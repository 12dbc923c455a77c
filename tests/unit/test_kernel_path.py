"""The kernel fast path without a kernel: its nfnetlink bytes, its reading of
the kernel's answers and of `nft -j`, and how KernelSets follows the table.

The messages are golden bytes, one line per field, checked against linux's
include/uapi/linux/netlink.h, netfilter/nfnetlink.h and netfilter/nf_tables.h:
a netlink header is in host byte order (little endian here), an nfgenmsg's
resource id and every nf_tables payload are big endian, a nested attribute's
type carries NLA_F_NESTED (0x8000), and every payload is padded to 4 bytes.
Nothing here computes the bytes under test.

KernelSets is driven by a real SessionTable, through the lifecycle's events,
over a path whose kernel calls are recorded instead of made.

Addresses come from the documentation ranges: the cluster is 192.0.2.10,
clients are in 198.51.100.0/24 and 203.0.113.0/24.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from ipaddress import IPv4Address

import pytest

from appliance.dataplane import kernel_path
from appliance.dataplane.kernel_path import (
    FOREIGN,
    MAX_BATCH,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM,
    OWNED,
    KernelPath,
    KernelSession,
    KernelSets,
    PathTimeouts,
    TableLost,
    element_batch,
    element_key,
    element_query,
    errors_in,
    expiration_in,
)
from protocols.claim_machine import Activity
from protocols.cluster_mac import cluster_mac
from protocols.session_key import SessionKey
from protocols.session_lifecycle import Event, Phase
from protocols.session_table import Session, SessionTable

CLUSTER_IP = IPv4Address("192.0.2.10")
BRIDGE_MAC = "02:00:00:00:00:b1"
# As appliance/daemon.py's _start_kernel_path builds them from the default ClaimSettings.
TIMEOUTS = PathTimeouts(handshake=10.0, tcp_idle=3600.0, udp_idle=30.0)
OTHER_MEMBER = 0x0123456789ABCDEF

TCP_KEY = SessionKey(6, IPv4Address("198.51.100.7").packed, 40000, CLUSTER_IP.packed, 80)
UDP_KEY = SessionKey(17, IPv4Address("198.51.100.9").packed, 53000, CLUSTER_IP.packed, 53)


def new_path(size: int = 1024) -> KernelPath:
    return KernelPath(
        cluster_ip=CLUSTER_IP,
        cluster_mac=str(cluster_mac(CLUSTER_IP)),
        bridge_mac=BRIDGE_MAC,
        size=size,
        timeouts=TIMEOUTS,
    )


# --- nfnetlink constants ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NETLINK_NETFILTER", 12),  # linux/netlink.h
        ("NLMSG_ERROR", 2),
        ("NLM_F_REQUEST", 0x01),
        ("NLM_F_CREATE", 0x400),
        ("NLA_F_NESTED", 0x8000),
        ("NFNL_SUBSYS_NFTABLES", 10),  # linux/netfilter/nfnetlink.h
        ("NFNL_MSG_BATCH_BEGIN", 0x10),  # NLMSG_MIN_TYPE
        ("NFNL_MSG_BATCH_END", 0x11),
        ("NFPROTO_BRIDGE", 7),  # linux/netfilter.h
        ("NFT_MSG_NEWSETELEM", 12),  # linux/netfilter/nf_tables.h, enum nf_tables_msg_types
        ("NFT_MSG_GETSETELEM", 13),
        ("NFT_MSG_DELSETELEM", 14),
        ("NFTA_SET_ELEM_LIST_TABLE", 1),  # enum nft_set_elem_list_attributes
        ("NFTA_SET_ELEM_LIST_SET", 2),
        ("NFTA_SET_ELEM_LIST_ELEMENTS", 3),
        ("NFTA_LIST_ELEM", 1),  # enum nft_list_attributes
        ("NFTA_SET_ELEM_KEY", 1),  # enum nft_set_elem_attributes
        ("NFTA_SET_ELEM_TIMEOUT", 4),
        ("NFTA_SET_ELEM_EXPIRATION", 5),
        ("NFTA_DATA_VALUE", 1),  # enum nft_data_attributes
    ],
)
def test_constants_are_the_kernels(name: str, value: int) -> None:
    assert getattr(kernel_path, name) == value


# --- Set keys -----------------------------------------------------------------
#
# ipv4_addr . inet_proto . inet_service . inet_service: the kernel concatenates
# the fields in registers of 32 bits, each value at the start of its register
# (network byte order) and the rest zero.


def test_element_key_of_a_tcp_session() -> None:
    assert element_key(TCP_KEY) == bytes.fromhex(
        "c6 33 64 07"  # ip saddr: 198.51.100.7
        "06 00 00 00"  # ip protocol: TCP (6), padded
        "9c 40 00 00"  # th sport: 40000, padded
        "00 50 00 00"  # th dport: 80, padded
    )


def test_element_key_of_a_udp_session() -> None:
    assert element_key(UDP_KEY) == bytes.fromhex(
        "c6 33 64 09"  # ip saddr: 198.51.100.9
        "11 00 00 00"  # ip protocol: UDP (17), padded
        "cf 08 00 00"  # th sport: 53000, padded
        "00 35 00 00"  # th dport: 53, padded
    )


# --- Batches and queries ------------------------------------------------------

ADD_BATCH = bytes.fromhex(
    # NFNL_MSG_BATCH_BEGIN
    "14 00 00 00"  # nlmsghdr length: 20
    "10 00"  # type: NFNL_MSG_BATCH_BEGIN
    "01 00"  # flags: NLM_F_REQUEST
    "64 00 00 00"  # sequence: 100
    "00 00 00 00"  # port id: 0 (the kernel)
    "00"  # nfgenmsg family: AF_UNSPEC
    "00"  # version: NFNETLINK_V0
    "00 0a"  # resource id: NFNL_SUBSYS_NFTABLES (big endian)
    # NFT_MSG_NEWSETELEM
    "5c 00 00 00"  # nlmsghdr length: 92
    "0c 0a"  # type: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM
    "01 04"  # flags: NLM_F_REQUEST | NLM_F_CREATE
    "65 00 00 00"  # sequence: 101
    "00 00 00 00"  # port id: 0
    "07"  # nfgenmsg family: NFPROTO_BRIDGE
    "00"  # version: NFNETLINK_V0
    "00 00"  # resource id: 0
    "0e 00"  # attribute length: 14
    "01 00"  # type: NFTA_SET_ELEM_LIST_TABLE
    "61 70 70 6c 69 61 6e 63 65 00"  # "appliance\0"
    "00 00"  # padding
    "0b 00"  # attribute length: 11
    "02 00"  # type: NFTA_SET_ELEM_LIST_SET
    "6f 77 6e 65 64 34 00"  # "owned4\0"
    "00"  # padding
    "2c 00"  # attribute length: 44
    "03 80"  # type: NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED
    "28 00"  # attribute length: 40
    "01 80"  # type: NFTA_LIST_ELEM | NLA_F_NESTED
    "18 00"  # attribute length: 24
    "01 80"  # type: NFTA_SET_ELEM_KEY | NLA_F_NESTED
    "14 00"  # attribute length: 20
    "01 00"  # type: NFTA_DATA_VALUE
    "c6 33 64 07 06 00 00 00 9c 40 00 00 00 50 00 00"  # the TCP session's key
    "0c 00"  # attribute length: 12
    "04 00"  # type: NFTA_SET_ELEM_TIMEOUT
    "00 00 00 00 00 00 27 10"  # 10000 ms (big endian)
    # NFNL_MSG_BATCH_END
    "14 00 00 00"  # nlmsghdr length: 20
    "11 00"  # type: NFNL_MSG_BATCH_END
    "01 00"  # flags: NLM_F_REQUEST
    "66 00 00 00"  # sequence: 102
    "00 00 00 00"  # port id: 0
    "00"  # nfgenmsg family: AF_UNSPEC
    "00"  # version: NFNETLINK_V0
    "00 0a"  # resource id: NFNL_SUBSYS_NFTABLES
)
ADD_MESSAGE = ADD_BATCH[20:112]  # the NFT_MSG_NEWSETELEM alone, as an error echoes it

DELETE_BATCH = bytes.fromhex(
    # NFNL_MSG_BATCH_BEGIN
    "14 00 00 00"  # nlmsghdr length: 20
    "10 00"  # type: NFNL_MSG_BATCH_BEGIN
    "01 00"  # flags: NLM_F_REQUEST
    "07 00 00 00"  # sequence: 7
    "00 00 00 00"  # port id: 0
    "00"  # nfgenmsg family: AF_UNSPEC
    "00"  # version: NFNETLINK_V0
    "00 0a"  # resource id: NFNL_SUBSYS_NFTABLES
    # NFT_MSG_DELSETELEM
    "54 00 00 00"  # nlmsghdr length: 84
    "0e 0a"  # type: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELSETELEM
    "01 00"  # flags: NLM_F_REQUEST (no NLM_F_CREATE)
    "08 00 00 00"  # sequence: 8
    "00 00 00 00"  # port id: 0
    "07"  # nfgenmsg family: NFPROTO_BRIDGE
    "00"  # version: NFNETLINK_V0
    "00 00"  # resource id: 0
    "0e 00"  # attribute length: 14
    "01 00"  # type: NFTA_SET_ELEM_LIST_TABLE
    "61 70 70 6c 69 61 6e 63 65 00"  # "appliance\0"
    "00 00"  # padding
    "0d 00"  # attribute length: 13
    "02 00"  # type: NFTA_SET_ELEM_LIST_SET
    "66 6f 72 65 69 67 6e 34 00"  # "foreign4\0"
    "00 00 00"  # padding
    "20 00"  # attribute length: 32
    "03 80"  # type: NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED
    "1c 00"  # attribute length: 28
    "01 80"  # type: NFTA_LIST_ELEM | NLA_F_NESTED
    "18 00"  # attribute length: 24
    "01 80"  # type: NFTA_SET_ELEM_KEY | NLA_F_NESTED
    "14 00"  # attribute length: 20
    "01 00"  # type: NFTA_DATA_VALUE
    "c6 33 64 09 11 00 00 00 cf 08 00 00 00 35 00 00"  # the UDP session's key
    # NFNL_MSG_BATCH_END
    "14 00 00 00"  # nlmsghdr length: 20
    "11 00"  # type: NFNL_MSG_BATCH_END
    "01 00"  # flags: NLM_F_REQUEST
    "09 00 00 00"  # sequence: 9
    "00 00 00 00"  # port id: 0
    "00"  # nfgenmsg family: AF_UNSPEC
    "00"  # version: NFNETLINK_V0
    "00 0a"  # resource id: NFNL_SUBSYS_NFTABLES
)

QUERY = bytes.fromhex(
    "50 00 00 00"  # nlmsghdr length: 80
    "0d 0a"  # type: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM
    "01 00"  # flags: NLM_F_REQUEST (one element, not NLM_F_DUMP)
    "05 00 00 00"  # sequence: 5
    "00 00 00 00"  # port id: 0
    "07"  # nfgenmsg family: NFPROTO_BRIDGE
    "00"  # version: NFNETLINK_V0
    "00 00"  # resource id: 0
    "0e 00"  # attribute length: 14
    "01 00"  # type: NFTA_SET_ELEM_LIST_TABLE
    "61 70 70 6c 69 61 6e 63 65 00"  # "appliance\0"
    "00 00"  # padding
    "0b 00"  # attribute length: 11
    "02 00"  # type: NFTA_SET_ELEM_LIST_SET
    "6f 77 6e 65 64 34 00"  # "owned4\0"
    "00"  # padding
    "20 00"  # attribute length: 32
    "03 80"  # type: NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED
    "1c 00"  # attribute length: 28
    "01 80"  # type: NFTA_LIST_ELEM | NLA_F_NESTED
    "18 00"  # attribute length: 24
    "01 80"  # type: NFTA_SET_ELEM_KEY | NLA_F_NESTED
    "14 00"  # attribute length: 20
    "01 00"  # type: NFTA_DATA_VALUE
    "c6 33 64 07 06 00 00 00 9c 40 00 00 00 50 00 00"  # the TCP session's key
)


def test_golden_bytes_are_whole() -> None:
    """The literals' own lengths, so that a typo in them fails here first."""
    assert (len(ADD_BATCH), len(ADD_MESSAGE), len(DELETE_BATCH), len(QUERY)) == (132, 92, 124, 80)


def test_add_batch() -> None:
    batch = element_batch(NFT_MSG_NEWSETELEM, OWNED, [(element_key(TCP_KEY), 10_000)], 100)
    assert batch.hex(" ") == ADD_BATCH.hex(" ")


def test_delete_batch() -> None:
    batch = element_batch(NFT_MSG_DELSETELEM, FOREIGN, [(element_key(UDP_KEY), None)], 7)
    assert batch.hex(" ") == DELETE_BATCH.hex(" ")


def test_query() -> None:
    assert element_query(OWNED, element_key(TCP_KEY), 5).hex(" ") == QUERY.hex(" ")


def test_a_batch_of_max_batch_elements_fits_in_its_attributes() -> None:
    """An attribute's length is 16 bits: MAX_BATCH elements with timeouts must fit in one list."""
    key = element_key(TCP_KEY)
    batch = element_batch(NFT_MSG_NEWSETELEM, OWNED, [(key, 10_000)] * MAX_BATCH, 1)
    assert batch.count(key) == MAX_BATCH
    # The list attribute's length, after the headers, the table and the set name.
    list_length = int.from_bytes(batch[20 + 20 + 16 + 12 :][:2], "little")
    assert list_length == 4 + 40 * MAX_BATCH


# --- The kernel's answers -----------------------------------------------------

# The kernel's answer to ADD_MESSAGE when the set is full (-ENFILE), capped to
# the request's header (NLM_F_CAPPED).
ERROR_SET_FULL = bytes.fromhex(
    "24 00 00 00"  # nlmsghdr length: 36
    "02 00"  # type: NLMSG_ERROR
    "00 01"  # flags: NLM_F_CAPPED
    "65 00 00 00"  # sequence: 101, the request's
    "39 30 00 00"  # port id: 12345, ours
    "e9 ff ff ff"  # error: -23 (-ENFILE)
    "5c 00 00 00"  # the request's nlmsghdr: length 92
    "0c 0a"  # type: NFT_MSG_NEWSETELEM
    "01 04"  # flags: NLM_F_REQUEST | NLM_F_CREATE
    "65 00 00 00"  # sequence: 101
    "00 00 00 00"  # port id: 0
)
ACK = bytes.fromhex(
    "24 00 00 00"  # nlmsghdr length: 36
    "02 00"  # type: NLMSG_ERROR
    "00 01"  # flags: NLM_F_CAPPED
    "64 00 00 00"  # sequence: 100
    "39 30 00 00"  # port id: 12345
    "00 00 00 00"  # error: 0, an acknowledgement
    "14 00 00 00"  # the request's nlmsghdr: length 20
    "10 00"  # type: NFNL_MSG_BATCH_BEGIN
    "01 00"  # flags: NLM_F_REQUEST
    "64 00 00 00"  # sequence: 100
    "00 00 00 00"  # port id: 0
)
# Without NETLINK_CAP_ACK (the module does not set it) the kernel echoes the
# whole request after the error.
ERROR_NO_ELEMENT = (
    bytes.fromhex(
        "70 00 00 00"  # nlmsghdr length: 112
        "02 00"  # type: NLMSG_ERROR
        "00 00"  # flags: none
        "65 00 00 00"  # sequence: 101
        "39 30 00 00"  # port id: 12345
        "fe ff ff ff"  # error: -2 (-ENOENT)
    )
    + ADD_MESSAGE  # the request, whole
)

# The kernel's answer to QUERY: nf_tables_fill_setelem_info, with nests
# started without NLA_F_NESTED (nla_nest_start_noflag).
ELEMENT_REPLY = bytes.fromhex(
    "6c 00 00 00"  # nlmsghdr length: 108
    "0c 0a"  # type: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM
    "00 00"  # flags: none
    "05 00 00 00"  # sequence: 5, the query's
    "39 30 00 00"  # port id: 12345
    "07"  # nfgenmsg family: NFPROTO_BRIDGE
    "00"  # version: NFNETLINK_V0
    "00 2a"  # resource id: the ruleset's generation
    "0e 00"  # attribute length: 14
    "01 00"  # type: NFTA_SET_ELEM_LIST_TABLE
    "61 70 70 6c 69 61 6e 63 65 00"  # "appliance\0"
    "00 00"  # padding
    "0b 00"  # attribute length: 11
    "02 00"  # type: NFTA_SET_ELEM_LIST_SET
    "6f 77 6e 65 64 34 00"  # "owned4\0"
    "00"  # padding
    "3c 00"  # attribute length: 60
    "03 00"  # type: NFTA_SET_ELEM_LIST_ELEMENTS
    "38 00"  # attribute length: 56
    "01 00"  # type: NFTA_LIST_ELEM
    "18 00"  # attribute length: 24
    "01 00"  # type: NFTA_SET_ELEM_KEY
    "14 00"  # attribute length: 20
    "01 00"  # type: NFTA_DATA_VALUE
    "c6 33 64 07 06 00 00 00 9c 40 00 00 00 50 00 00"  # the TCP session's key
    "0c 00"  # attribute length: 12
    "04 00"  # type: NFTA_SET_ELEM_TIMEOUT
    "00 00 00 00 00 00 27 10"  # 10000 ms, as added
    "04 00"  # attribute length: 4
    "08 00"  # type: NFTA_SET_ELEM_PAD (a 64-bit alignment pad some architectures put in)
    "0c 00"  # attribute length: 12
    "05 00"  # type: NFTA_SET_ELEM_EXPIRATION
    "00 00 00 00 00 00 25 1c"  # 9500 ms
)
QUERY_ERROR = bytes.fromhex(
    "24 00 00 00"  # nlmsghdr length: 36
    "02 00"  # type: NLMSG_ERROR
    "00 01"  # flags: NLM_F_CAPPED
    "05 00 00 00"  # sequence: 5
    "39 30 00 00"  # port id: 12345
    "fe ff ff ff"  # error: -2 (-ENOENT): no such element
    "50 00 00 00"  # the query's nlmsghdr: length 80
    "0d 0a"  # type: NFT_MSG_GETSETELEM
    "01 00"  # flags: NLM_F_REQUEST
    "05 00 00 00"  # sequence: 5
    "00 00 00 00"  # port id: 0
)


def test_answer_literals_are_whole() -> None:
    assert [len(answer) for answer in (ERROR_SET_FULL, ACK, ERROR_NO_ELEMENT)] == [36, 36, 112]
    assert (len(ELEMENT_REPLY), len(QUERY_ERROR)) == (108, 36)


def test_one_error() -> None:
    assert errors_in(ERROR_SET_FULL) == [(101, 23)]


def test_an_acknowledgement_is_no_error() -> None:
    assert errors_in(ACK) == []


def test_no_answer_is_no_error() -> None:
    assert errors_in(b"") == []


def test_several_messages() -> None:
    """Each message is stepped over by its length; only NLMSG_ERROR with a code counts."""
    capped_enfile = ERROR_SET_FULL[:8] + (104).to_bytes(4, "little") + ERROR_SET_FULL[12:]
    replies = ACK + ERROR_NO_ELEMENT + ELEMENT_REPLY + capped_enfile
    assert errors_in(replies) == [(101, 2), (104, 23)]


def test_two_errors_of_uneven_length() -> None:
    assert errors_in(ERROR_NO_ELEMENT + ERROR_SET_FULL) == [(101, 2), (101, 23)]


def test_a_partial_header_after_a_message_is_ignored() -> None:
    assert errors_in(ERROR_SET_FULL + ACK[:10]) == [(101, 23)]


def test_a_message_cut_after_its_error_code_still_counts() -> None:
    """recv() into a buffer shorter than the datagram keeps its start (MSG_TRUNC)."""
    assert errors_in(ERROR_NO_ELEMENT[:64]) == [(101, 2)]


def test_a_message_cut_inside_its_error_code_is_not_a_crash() -> None:
    assert errors_in(ERROR_SET_FULL[:18]) == []


def test_a_header_claiming_less_than_itself_stops_the_walk() -> None:
    broken = (8).to_bytes(4, "little") + ERROR_SET_FULL[4:]
    assert errors_in(broken + ERROR_SET_FULL) == []


def test_expiration_of_an_element() -> None:
    assert expiration_in(ELEMENT_REPLY) == 9500


def test_expiration_of_an_error_is_none() -> None:
    assert expiration_in(QUERY_ERROR) is None


def test_expiration_of_nothing_is_none() -> None:
    assert expiration_in(b"") is None


# --- Reading the sets back ----------------------------------------------------

# `nft -j list table bridge appliance`, as nftables 1.0 prints it. An
# element's `timeout` stays what it was added with; `update` from a packet
# moves only its `expires` (both in whole seconds).
LISTING = json.dumps(
    {
        "nftables": [
            {
                "metainfo": {
                    "version": "1.0.9",
                    "release_name": "Old Doc Yak #3",
                    "json_schema_version": 1,
                }
            },
            {"table": {"family": "bridge", "name": "appliance", "handle": 3}},
            {
                "set": {
                    "family": "bridge",
                    "name": "owned4",
                    "table": "appliance",
                    "type": ["ipv4_addr", "inet_proto", "inet_service", "inet_service"],
                    "handle": 1,
                    "size": 1024,
                    "flags": ["timeout"],
                    "elem": [
                        # TCP, refreshed to tcp_idle by a packet 10 s ago.
                        {
                            "elem": {
                                "val": {"concat": ["198.51.100.7", "tcp", 40000, 80]},
                                "timeout": 10,
                                "expires": 3590,
                            }
                        },
                        # TCP, only its SYN 3 s ago.
                        {
                            "elem": {
                                "val": {"concat": ["198.51.100.8", "tcp", 40001, 443]},
                                "timeout": 10,
                                "expires": 7,
                            }
                        },
                        # UDP, its last datagram 9 s ago.
                        {
                            "elem": {
                                "val": {"concat": ["198.51.100.9", "udp", 53000, 53]},
                                "timeout": 30,
                                "expires": 21,
                            }
                        },
                        # Junk: neither TCP nor UDP, a bare value, a short concat.
                        {
                            "elem": {
                                "val": {"concat": ["198.51.100.10", "icmp", 7, 0]},
                                "timeout": 30,
                                "expires": 30,
                            }
                        },
                        "198.51.100.11",
                        {"elem": {"val": {"concat": ["198.51.100.12", "tcp", 1]}, "timeout": 10}},
                        {"elem": {"val": "198.51.100.13", "timeout": 10}},
                    ],
                }
            },
            {
                "set": {
                    "family": "bridge",
                    "name": "foreign4",
                    "table": "appliance",
                    "type": ["ipv4_addr", "inet_proto", "inet_service", "inet_service"],
                    "handle": 2,
                    "size": 1024,
                    "flags": ["timeout"],
                    "elem": [
                        {
                            "elem": {
                                "val": {"concat": ["203.0.113.5", "udp", 5000, 53]},
                                "timeout": 30,
                                "expires": 29,
                            }
                        }
                    ],
                }
            },
            # Another set (not ours, or of a later release) is left alone.
            {
                "set": {
                    "family": "bridge",
                    "name": "owned6",
                    "table": "appliance",
                    "type": ["ipv4_addr", "inet_proto", "inet_service", "inet_service"],
                    "handle": 9,
                    "size": 1024,
                    "flags": ["timeout"],
                    "elem": [
                        {
                            "elem": {
                                "val": {"concat": ["198.51.100.20", "tcp", 1, 2]},
                                "timeout": 10,
                                "expires": 5,
                            }
                        }
                    ],
                }
            },
            {
                "chain": {
                    "family": "bridge",
                    "table": "appliance",
                    "name": "prerouting",
                    "handle": 3,
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -300,
                    "policy": "accept",
                }
            },
            {
                "rule": {
                    "family": "bridge",
                    "table": "appliance",
                    "chain": "prerouting",
                    "handle": 8,
                    "expr": [{"jump": {"target": "cluster4"}}],
                }
            },
            "junk",
            {"set": "junk"},
        ]
    }
)


def key(transport: int, client: str, client_port: int, cluster_port: int) -> SessionKey:
    return SessionKey(
        transport, IPv4Address(client).packed, client_port, CLUSTER_IP.packed, cluster_port
    )


def test_parse_listing() -> None:
    owned, foreign = new_path().parse_listing(LISTING)
    assert owned == [
        KernelSession(key(6, "198.51.100.7", 40000, 80), age=10.0, refreshed=True),
        KernelSession(key(6, "198.51.100.8", 40001, 443), age=3.0, refreshed=False),
        KernelSession(key(17, "198.51.100.9", 53000, 53), age=9.0, refreshed=True),
    ]
    assert foreign == [KernelSession(key(17, "203.0.113.5", 5000, 53), age=1.0, refreshed=True)]


def test_an_element_about_to_expire_has_no_expires() -> None:
    """nft leaves out `expires` when it is 0: the element is as old as its timeout."""
    listing = json.dumps(
        {
            "nftables": [
                {
                    "set": {
                        "name": "owned4",
                        "elem": [
                            {
                                "elem": {
                                    "val": {"concat": ["198.51.100.8", "tcp", 40001, 443]},
                                    "timeout": 10,
                                }
                            }
                        ],
                    }
                }
            ]
        }
    )
    owned, foreign = new_path().parse_listing(listing)
    assert owned == [KernelSession(key(6, "198.51.100.8", 40001, 443), 10.0, False)]
    assert foreign == []


def test_an_empty_table() -> None:
    assert new_path().parse_listing('{"nftables": [{"metainfo": {}}]}') == ([], [])


# --- KernelSets ---------------------------------------------------------------


class RecordingPath(KernelPath):
    """A KernelPath whose kernel calls are recorded; the kernel's answers are set by hand."""

    def __init__(self) -> None:
        super().__init__(
            cluster_ip=CLUSTER_IP,
            cluster_mac=str(cluster_mac(CLUSTER_IP)),
            bridge_mac=BRIDGE_MAC,
            size=1024,
            timeouts=TIMEOUTS,
        )
        self.calls: list[tuple[str, str, list[SessionKey]]] = []
        self.refuse: set[SessionKey] = set()  # the full set refuses these
        self.expirations: dict[tuple[str, SessionKey], float] = {}
        self.asked: list[tuple[str, SessionKey]] = []  # expiration() calls
        self.degraded_calls: list[bool] = []
        self.established_adds: list[bool] = []  # the `established` of each add() call

    def add(
        self, set_name: str, keys: Sequence[SessionKey], *, established: bool = False
    ) -> list[SessionKey]:
        self.calls.append(("add", set_name, list(keys)))
        self.established_adds.append(established)
        return [key for key in keys if key in self.refuse]

    def remove_elements(self, set_name: str, keys: Sequence[SessionKey]) -> None:
        self.calls.append(("remove", set_name, list(keys)))

    def expiration(self, set_name: str, key: SessionKey) -> float | None:
        self.asked.append((set_name, key))
        return self.expirations.get((set_name, key))

    def set_degraded(self, degraded: bool) -> None:
        self.degraded_calls.append(degraded)
        self.degraded = degraded


def tcp(number: int) -> SessionKey:
    return SessionKey(6, bytes((198, 51, 100, number)), 40000 + number, CLUSTER_IP.packed, 80)


def udp(number: int) -> SessionKey:
    return SessionKey(17, bytes((203, 0, 113, number)), 50000 + number, CLUSTER_IP.packed, 53)


class Fixture:
    def __init__(self) -> None:
        self.path = RecordingPath()
        self.sets = KernelSets(self.path)
        self.table = SessionTable(64, listener=self.sets)

    def waiting(self, key: SessionKey) -> Session:
        session = Session(key, Phase.WAITING, 0.0)
        self.table.add(session)
        return session

    def won(self, key: SessionKey) -> Session:
        session = self.waiting(key)
        self.table.move(session, Event.TURN)
        self.table.move(session, Event.WIN)
        return session

    def owned_in_kernel(self, key: SessionKey) -> Session:
        session = self.won(key)
        self.sets.flush()
        assert key in self.sets.owned
        self.path.calls.clear()
        return session

    def asserted_foreign(self, key: SessionKey) -> Session:
        """A flow another member asserted before its first packet reached us."""
        session = Session(key, Phase.FOREIGN, 0.0)
        session.best_member, session.best_score, session.best_asserted = OTHER_MEMBER, 0.5, True
        self.table.add(session)
        return session


@pytest.fixture
def kit() -> Fixture:
    return Fixture()


def test_a_won_session_is_added_on_the_next_flush(kit: Fixture) -> None:
    session = kit.waiting(tcp(1))
    kit.table.move(session, Event.TURN)
    assert not kit.sets.pending  # undecided: the kernel hears nothing yet
    kit.table.move(session, Event.WIN)
    assert kit.sets.pending
    assert kit.path.calls == []  # nothing is written until the flush
    kit.sets.flush()
    assert kit.path.calls == [("add", OWNED, [tcp(1)])]
    assert kit.sets.owned == {tcp(1)}
    assert not kit.sets.pending


def test_a_flush_with_nothing_queued_calls_nothing(kit: Fixture) -> None:
    kit.owned_in_kernel(tcp(1))
    kit.sets.flush()
    assert kit.path.calls == []


def test_wins_of_one_wakeup_go_in_one_call(kit: Fixture) -> None:
    kit.won(tcp(1))
    kit.won(udp(2))
    kit.won(tcp(3))
    kit.sets.flush()
    assert kit.path.calls == [("add", OWNED, [tcp(1), udp(2), tcp(3)])]


def test_a_lost_claim_is_never_written(kit: Fixture) -> None:
    session = kit.waiting(tcp(1))
    kit.table.move(session, Event.TURN)
    kit.table.move(session, Event.LOSE)
    kit.table.remove(session)
    assert not kit.sets.pending
    kit.sets.flush()
    assert kit.path.calls == []


def test_removals_are_flushed_before_additions(kit: Fixture) -> None:
    old = kit.owned_in_kernel(tcp(1))
    gone_flow = kit.asserted_foreign(udp(2))
    kit.sets.flush()
    kit.path.calls.clear()
    kit.asserted_foreign(udp(4))
    kit.won(tcp(3))
    kit.table.remove(gone_flow)
    kit.table.remove(old)
    kit.sets.flush()
    assert kit.path.calls == [
        ("remove", OWNED, [tcp(1)]),
        ("remove", FOREIGN, [udp(2)]),
        ("add", OWNED, [tcp(3)]),
        ("add", FOREIGN, [udp(4)]),
    ]


def test_a_session_won_and_gone_before_a_flush_costs_no_kernel_call(kit: Fixture) -> None:
    session = kit.won(tcp(1))
    kit.table.remove(session)
    assert not kit.sets.pending
    kit.sets.flush()
    assert kit.path.calls == []
    assert kit.sets.owned == set()


def test_a_key_reused_at_once_is_added_afresh(kit: Fixture) -> None:
    """KernelSets.flush: "removals first, so a key re-used at once is added afresh".

    A new connection from the same client port replaces a closed one before
    the next flush: its element must be written anew, with the handshake
    timeout, not left with the old connection's refreshed expiry (an add of
    an element that exists changes nothing in the kernel).
    """
    old = kit.owned_in_kernel(tcp(1))
    kit.table.move(old, Event.CLIENT_CLOSE)
    kit.table.remove(old)
    kit.won(tcp(1))
    kit.sets.flush()
    assert kit.path.calls == [("remove", OWNED, [tcp(1)]), ("add", OWNED, [tcp(1)])]
    assert kit.sets.owned == {tcp(1)}


def test_a_yielded_session_is_removed(kit: Fixture) -> None:
    session = kit.owned_in_kernel(tcp(1))
    kit.table.move(session, Event.YIELD)
    kit.sets.flush()
    assert kit.path.calls == [("remove", OWNED, [tcp(1)])]
    assert kit.sets.owned == set()


def test_a_closing_session_keeps_its_element_until_it_yields(kit: Fixture) -> None:
    session = kit.owned_in_kernel(tcp(1))
    kit.table.move(session, Event.CLIENT_CLOSE)
    assert not kit.sets.pending  # its FIN and RST reach the TAP anyway
    kit.table.move(session, Event.YIELD)
    kit.sets.flush()
    assert kit.path.calls == [("remove", OWNED, [tcp(1)])]


def test_a_closing_session_that_is_forgotten_is_removed(kit: Fixture) -> None:
    session = kit.owned_in_kernel(tcp(1))
    kit.table.move(session, Event.CLIENT_CLOSE)
    kit.table.remove(session)
    kit.sets.flush()
    assert kit.path.calls == [("remove", OWNED, [tcp(1)])]


def test_an_adopted_session_is_in_the_kernel_already(kit: Fixture) -> None:
    """After a restart, a session the kernel kept serving enters the table owned."""
    session = Session(tcp(1), Phase.OWNED, 0.0)
    kit.table.add(session)
    assert not kit.sets.pending
    assert kit.sets.owned == {tcp(1)}
    kit.table.remove(session)
    kit.sets.flush()
    assert kit.path.calls == [("remove", OWNED, [tcp(1)])]


def test_an_asserted_foreign_flow_goes_to_the_foreign_set_and_leaves_it(kit: Fixture) -> None:
    session = kit.asserted_foreign(udp(1))
    kit.sets.flush()
    assert kit.path.calls == [("add", FOREIGN, [udp(1)])]
    assert kit.sets.foreign == {udp(1)}
    assert kit.sets.owned == set()
    kit.path.calls.clear()
    kit.table.remove(session)
    kit.sets.flush()
    assert kit.path.calls == [("remove", FOREIGN, [udp(1)])]
    assert kit.sets.foreign == set()


def test_a_foreign_flow_gone_before_a_flush_costs_no_kernel_call(kit: Fixture) -> None:
    """As for a won session: a DELSETELEM of an element never added fails
    (-ENOENT) and makes its whole batch be retried one element at a time."""
    session = kit.asserted_foreign(udp(1))
    kit.table.remove(session)
    kit.sets.flush()
    assert kit.path.calls == []
    assert kit.sets.foreign == set()


@pytest.mark.parametrize(
    ("transport_key", "asserted", "member"),
    [
        (udp(1), False, OTHER_MEMBER),  # only claimed: it may still be ours to claim again
        (udp(1), True, -1),  # no member known
        (tcp(1), True, OTHER_MEMBER),  # other members' TCP is dropped by a rule already
    ],
)
def test_other_foreign_sessions_stay_out_of_the_foreign_set(
    kit: Fixture, transport_key: SessionKey, asserted: bool, member: int
) -> None:
    session = Session(transport_key, Phase.FOREIGN, 0.0)
    session.best_member, session.best_asserted = member, asserted
    kit.table.add(session)
    kit.table.remove(session)
    kit.sets.flush()
    assert kit.path.calls == []


def test_a_refused_session_is_served_on_the_tun_path(kit: Fixture) -> None:
    kit.path.refuse = {tcp(2)}
    kit.won(tcp(1))
    kit.won(tcp(2))
    kit.sets.flush()
    assert kit.path.calls == [("add", OWNED, [tcp(1), tcp(2)])]
    assert kit.sets.owned == {tcp(1)}
    assert set(kit.sets.refused) == {tcp(2)}
    assert kit.path.degraded_calls == [True]


def test_the_path_is_degraded_once_per_fill(kit: Fixture) -> None:
    kit.path.refuse = {tcp(2), tcp(3)}
    kit.won(tcp(2))
    kit.sets.flush()
    kit.won(tcp(3))
    kit.sets.flush()
    assert set(kit.sets.refused) == {tcp(2), tcp(3)}
    assert kit.path.degraded_calls == [True]


def test_a_refused_foreign_flow_does_not_degrade_the_path(kit: Fixture) -> None:
    kit.path.refuse = {udp(1)}
    kit.asserted_foreign(udp(1))
    kit.sets.flush()
    assert kit.sets.foreign == set()
    assert set(kit.sets.refused) == set()
    assert kit.path.degraded_calls == []


def test_retry_refused_moves_them_to_the_set_when_it_has_room(kit: Fixture) -> None:
    kit.path.refuse = {tcp(2), tcp(3)}
    kit.won(tcp(1))
    kit.won(tcp(2))
    kit.won(tcp(3))
    kit.sets.flush()
    kit.path.calls.clear()
    kit.sets.retry_refused()  # still full
    assert [(call, name, set(keys)) for call, name, keys in kit.path.calls] == [
        ("add", OWNED, {tcp(2), tcp(3)})
    ]
    assert set(kit.sets.refused) == {tcp(2), tcp(3)}
    kit.path.refuse = {tcp(3)}
    kit.sets.retry_refused()
    assert set(kit.sets.refused) == {tcp(3)}
    assert kit.sets.owned == {tcp(1), tcp(2)}
    kit.path.refuse = set()
    kit.sets.retry_refused()
    assert set(kit.sets.refused) == set()
    assert kit.sets.owned == {tcp(1), tcp(2), tcp(3)}


def test_retry_refused_with_none_refused_calls_nothing(kit: Fixture) -> None:
    kit.owned_in_kernel(tcp(1))
    kit.sets.retry_refused()
    assert kit.path.calls == []


def test_a_refused_session_that_ends_is_not_retried(kit: Fixture) -> None:
    kit.path.refuse = {tcp(1), tcp(2)}
    gone = kit.won(tcp(1))
    yielded = kit.won(tcp(2))
    kit.sets.flush()
    kit.path.calls.clear()
    kit.table.remove(gone)
    kit.table.move(yielded, Event.YIELD)
    assert set(kit.sets.refused) == set()
    kit.sets.flush()
    kit.sets.retry_refused()
    assert kit.path.calls == []  # never in the kernel: nothing to remove, nothing to retry


NOW = 5000.0


def test_activity_of_an_established_tcp_session(kit: Fixture) -> None:
    session = kit.owned_in_kernel(tcp(1))
    kit.path.expirations[OWNED, tcp(1)] = 3590.5  # refreshed to 3600 s, 9.5 s ago
    assert kit.sets.last_activity(session, NOW) == Activity(NOW - 9.5, established=True)
    assert kit.path.asked == [(OWNED, tcp(1))]


@pytest.mark.parametrize("expires", [10.0, 9.5, 0.25])
def test_a_tcp_session_with_only_its_syn_has_no_activity(kit: Fixture, expires: float) -> None:
    """Its element still has the handshake timeout: the handshake timer stands."""
    session = kit.owned_in_kernel(tcp(1))
    kit.path.expirations[OWNED, tcp(1)] = expires
    assert kit.sets.last_activity(session, NOW) is None
    assert kit.path.asked == [(OWNED, tcp(1))]


def test_activity_of_an_owned_udp_flow(kit: Fixture) -> None:
    session = kit.owned_in_kernel(udp(1))
    kit.path.expirations[OWNED, udp(1)] = 25.5
    assert kit.sets.last_activity(session, NOW) == Activity(NOW - 4.5, established=True)


def test_activity_of_a_foreign_flow(kit: Fixture) -> None:
    session = kit.asserted_foreign(udp(1))
    kit.sets.flush()
    kit.path.expirations[FOREIGN, udp(1)] = 12.0
    assert kit.sets.last_activity(session, NOW) == Activity(NOW - 18.0, established=True)
    assert kit.path.asked == [(FOREIGN, udp(1))]


def test_a_session_in_no_set_is_not_asked_for(kit: Fixture) -> None:
    kit.path.refuse = {tcp(2)}
    queued = kit.won(tcp(1))  # not flushed yet
    refused = kit.won(tcp(2))
    kit.path.expirations[OWNED, tcp(1)] = 3590.0
    assert kit.sets.last_activity(queued, NOW) is None
    kit.sets.flush()
    kit.path.expirations[OWNED, tcp(2)] = 3590.0
    assert kit.sets.last_activity(refused, NOW) is None
    assert kit.path.asked == []


def test_an_element_the_kernel_let_expire_has_no_activity(kit: Fixture) -> None:
    session = kit.owned_in_kernel(tcp(1))
    assert kit.sets.last_activity(session, NOW) is None  # the kernel answers None
    assert kit.path.asked == [(OWNED, tcp(1))]


def test_sessions_refused_when_established_are_retried_with_their_idle_timeout(
    kit: Fixture,
) -> None:
    """A session served on the TUN path while the set was full has completed
    its handshake (the TUN path sees it): it goes into the set with the idle
    timeout, not the handshake one, so an idle live connection is not cut."""
    kit.path.refuse = {tcp(1), tcp(2)}
    first, second = kit.won(tcp(1)), kit.won(tcp(2))
    kit.sets.flush()
    kit.table.mark_established(first)
    kit.path.refuse = set()
    kit.path.calls.clear()
    kit.path.established_adds.clear()
    kit.sets.retry_refused()
    assert kit.path.calls == [("add", OWNED, [tcp(1)]), ("add", OWNED, [tcp(2)])]
    assert kit.path.established_adds == [True, False]
    assert not kit.sets.refused
    assert second.key in kit.sets.owned


class GonePath(RecordingPath):
    """A kernel whose table was removed from outside (nft flush ruleset)."""

    def add(
        self, set_name: str, keys: Sequence[SessionKey], *, established: bool = False
    ) -> list[SessionKey]:
        raise TableLost(f"the set {set_name} is gone")


def test_a_table_removed_from_outside_sends_the_member_to_the_tun_path() -> None:
    """The next add finds no set: the member goes on without the kernel (every
    frame reaches its TAP, the machine injects), never raising into the data
    plane, and asks the kernel nothing more."""
    kit = Fixture()
    kit.path = GonePath()
    kit.sets = KernelSets(kit.path)
    kit.table = SessionTable(64, listener=kit.sets)
    session = kit.won(tcp(1))
    kit.sets.flush()
    assert kit.path.lost
    kit.won(tcp(2))
    kit.sets.flush()
    assert not kit.sets.pending
    assert kit.sets.last_activity(session, 100.0) is None
    assert kit.path.asked == []


def test_timeouts_of_re_added_sessions() -> None:
    path = new_path()
    established = KernelSession(tcp(1), age=100.0, refreshed=True)
    half_open = KernelSession(tcp(2), age=0.0, refreshed=False)
    flow = KernelSession(udp(3), age=10.0, refreshed=True)
    assert path.timeout_of(established) == 3600 - 100
    assert path.timeout_of(half_open) == 10
    assert path.timeout_of(flow) == 30 - 10
    assert TIMEOUTS.first(6) == 10
    assert TIMEOUTS.first(6, established=True) == 3600
    assert TIMEOUTS.first(17) == 30
    assert not TIMEOUTS.refreshed(6, 11.0) and TIMEOUTS.refreshed(6, 11.5)
    assert TIMEOUTS.refreshed(17, 1.0)
