"""The fast classifier agrees with the declarations, on fixtures and generated frames."""

import pytest
from hypothesis import given, settings

from protocols.classifier import Classifier, FrameKind, network_offset
from tests.fixtures.frames import CLUSTER_IP, CLUSTER_IP6, FIXTURES, fixture_frame
from tests.unit.classifier_oracle import classify_with_declarations
from tests.unit.frame_strategies import (
    CLUSTER_ADDRESSES,
    any_frames,
    damaged_lengths,
    malformed_frames,
    valid_frames,
)

CLASSIFIER = Classifier(CLUSTER_ADDRESSES)
# Generating a frame through construct costs milliseconds: a quarter of the
# profile's examples (2,500 in CI) for the agreement properties.
AGREEMENT = settings(max_examples=max(100, settings().max_examples // 4))
CLUSTER = frozenset(CLUSTER_ADDRESSES)

EXPECTED_KINDS = {
    "arp_request": FrameKind.ARP_REQUEST,
    "arp_reply": FrameKind.OTHER,
    "gratuitous_arp": FrameKind.ARP_REQUEST,
    "tcp_syn": FrameKind.TCP,
    "tcp_syn_ack": FrameKind.OTHER,  # leaves the cluster, to the client
    "tcp_ack_with_data": FrameKind.TCP,
    "tcp_fin": FrameKind.TCP,
    "tcp_rst": FrameKind.TCP,
    "udp_dns_query": FrameKind.UDP,
    "icmp_echo_request": FrameKind.ICMP_ECHO,
    "icmp_fragmentation_needed": FrameKind.ICMP_ERROR,
    "ipv4_first_fragment": FrameKind.UDP,
    "ipv4_later_fragment": FrameKind.FRAGMENT,
    "vlan_tagged_syn": FrameKind.TCP,
    "ipv6_tcp_syn": FrameKind.TCP,
    "ndp_neighbor_solicitation": FrameKind.NEIGHBOR_SOLICITATION,
    "ndp_neighbor_advertisement": FrameKind.OTHER,
    "claim": FrameKind.CLAIM,
    "assertion": FrameKind.CLAIM,
    "hello": FrameKind.CLAIM,
    "hello_draining": FrameKind.CLAIM,
    "acknowledgement": FrameKind.CLAIM,
    "claim_ipv6_session": FrameKind.CLAIM,
    "claim_authenticated": FrameKind.CLAIM,
}


def test_every_fixture_has_an_expected_kind() -> None:
    assert EXPECTED_KINDS.keys() == FIXTURES.keys()


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_fixture_kinds(name: str) -> None:
    frame = fixture_frame(name)
    result = CLASSIFIER.classify(frame)
    assert result.kind == EXPECTED_KINDS[name]
    assert result == classify_with_declarations(frame, CLUSTER)


def test_the_syn_record_names_the_session_and_payload() -> None:
    frame = fixture_frame("tcp_syn")
    result = CLASSIFIER.classify(frame)
    assert result.key is not None
    assert result.key.client_port == 51234 and result.key.cluster_port == 80
    assert result.key.cluster_address == CLUSTER_IP.packed
    assert result.tcp_flags == 0x02
    assert result.network_offset == 14
    assert result.payload_offset == len(frame)  # a SYN carries no data


def test_the_icmp_error_names_the_session_it_is_about() -> None:
    result = CLASSIFIER.classify(fixture_frame("icmp_fragmentation_needed"))
    syn = CLASSIFIER.classify(fixture_frame("tcp_syn"))
    assert result.key == syn.key


def test_both_fragments_name_the_same_datagram() -> None:
    first = CLASSIFIER.classify(fixture_frame("ipv4_first_fragment"))
    later = CLASSIFIER.classify(fixture_frame("ipv4_later_fragment"))
    assert first.fragment is not None and first.fragment == later.fragment
    assert later.key is None


def test_a_frame_inside_a_larger_buffer_and_a_memoryview() -> None:
    frame = fixture_frame("ipv6_tcp_syn")
    plain = CLASSIFIER.classify(frame)
    assert plain.key is not None and plain.key.cluster_address == CLUSTER_IP6.packed
    shifted = CLASSIFIER.classify(bytes(10) + frame, 10)
    assert shifted.key == plain.key
    assert shifted.payload_offset == plain.payload_offset + 10
    assert CLASSIFIER.classify(memoryview(frame)) == plain


@AGREEMENT
@given(valid_frames())
def test_agrees_with_the_declarations_on_valid_frames(frame: bytes) -> None:
    assert CLASSIFIER.classify(frame) == classify_with_declarations(frame, CLUSTER)


@given(valid_frames())
def test_the_shell_finds_a_queued_packets_network_header_as_the_classifier_did(
    frame: bytes,
) -> None:
    """The data plane re-finds it with `network_offset` when it injects a queued frame."""
    record = CLASSIFIER.classify(frame)
    if record.kind >= FrameKind.CLAIM:  # the IP kinds the claim machine queues
        assert network_offset(frame, 0) == record.network_offset


@AGREEMENT
@given(malformed_frames())
def test_agrees_with_the_declarations_on_malformed_frames(frame: bytes) -> None:
    assert CLASSIFIER.classify(frame) == classify_with_declarations(frame, CLUSTER)


@AGREEMENT
@given(damaged_lengths())
def test_agrees_with_the_declarations_on_damaged_lengths(frame: bytes) -> None:
    assert CLASSIFIER.classify(frame) == classify_with_declarations(frame, CLUSTER)


@given(any_frames)
def test_never_raises(frame: bytes) -> None:
    assert isinstance(CLASSIFIER.classify(frame).kind, FrameKind)
