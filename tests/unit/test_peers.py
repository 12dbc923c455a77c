"""The peer table on its own, stepped by hand: `now` is a number we pass in and
every timer value is asserted exactly (in the manner of aioquic's tests).

Times are multiples of 1/8 so that every sum below is exact in binary floats.
"""

from __future__ import annotations

from protocols.peers import MAX_MISSING, Peer, PeerTable

TIMEOUT = 3.0
WINDOW = 0.5
ALICE, BOB, CAROL = 11, 22, 33


def new_table(max_members: int = 4) -> PeerTable:
    return PeerTable(member_timeout=TIMEOUT, reorder_window=WINDOW, max_members=max_members)


def met(table: PeerTable, member_id: int = ALICE, counter: int = 1, now: float = 1.0) -> Peer:
    peer, last_heard = table.meet(member_id, counter, now)
    assert last_heard is None
    return peer


def trusting(table: PeerTable, member_id: int = ALICE, counter: int = 1) -> Peer:
    """A peer met at 0.0, heard in order up to `counter`; past its warm-up
    (reorder_window after meeting) from `WINDOW` on."""
    peer = met(table, member_id, 1, 0.0)
    for next_counter in range(2, counter + 1):
        assert not table.heard(peer, next_counter, 0.0)
    return peer


# ------------------------------------------------------------- membership


def test_a_new_peer_starts_in_order_and_trusting_nothing_it_sent_so_far() -> None:
    table = new_table()
    peer, last_heard = table.meet(ALICE, 7, 1.25)
    assert last_heard is None
    assert peer.member_id == ALICE
    assert peer.last_counter == 7
    assert peer.last_heard == 1.25
    assert peer.in_order_at == 1.25
    assert peer.heard_since == 1.25
    assert peer.trust_after == 7
    assert peer.missing == {}
    assert peer.loss_check_at is None
    assert peer.parked_acknowledgements == []
    assert len(table) == 1
    assert table.get(ALICE) is peer
    assert table.get(BOB) is None
    assert list(table) == [peer]
    assert table.next_deadline() is None


def test_a_peer_is_alive_up_to_member_timeout_after_it_was_last_heard() -> None:
    table = new_table()
    alice = met(table, ALICE, 1, 1.0)
    bob = met(table, BOB, 1, 2.0)
    assert table.alive(alice, 1.0 + TIMEOUT)
    assert not table.alive(alice, 1.0 + TIMEOUT + 0.125)
    assert table.live(1.0 + TIMEOUT) == [alice, bob]
    assert table.expired(1.0 + TIMEOUT) == []
    assert table.live(4.125) == [bob]
    assert table.expired(4.125) == [alice]
    assert table.live(5.125) == []
    assert table.expired(5.125) == [alice, bob]


def test_hearing_a_peer_keeps_it_alive() -> None:
    table = new_table()
    alice = met(table, ALICE, 1, 1.0)
    table.heard(alice, 2, 3.5)
    assert alice.last_heard == 3.5
    assert table.alive(alice, 6.5)
    assert table.expired(6.5) == []
    assert table.expired(6.625) == [alice]


def test_the_table_is_full_at_max_members_and_oldest_is_the_least_recently_heard() -> None:
    table = new_table(max_members=2)
    alice = met(table, ALICE, 1, 1.0)
    assert not table.is_full
    bob = met(table, BOB, 1, 2.0)
    assert table.is_full
    assert table.oldest() is alice
    table.heard(alice, 2, 3.0)
    assert table.oldest() is bob


def test_a_member_forgotten_then_met_again_says_when_it_was_last_heard() -> None:
    table = new_table()
    alice = met(table, ALICE, 1, 1.0)
    table.heard(alice, 2, 2.5)
    table.forget(alice)
    assert table.get(ALICE) is None
    assert len(table) == 0
    again, last_heard = table.meet(ALICE, 9, 8.0)
    assert last_heard == 2.5
    assert again is not alice
    assert again.last_counter == 9
    assert table.get(ALICE) is again
    # Met again, it is no longer among the departed: meeting it once more
    # finds no record of the old partition.
    newest, last_heard = table.meet(ALICE, 1, 8.5)
    assert last_heard is None
    table.forget(newest)
    _, last_heard = table.meet(ALICE, 10, 9.0)
    assert last_heard == 8.5
    _, last_heard = table.meet(BOB, 1, 9.0)
    assert last_heard is None


def test_the_departed_are_bounded_by_max_members_oldest_forgotten_first() -> None:
    table = new_table(max_members=2)
    alice = met(table, ALICE, 1, 1.0)
    bob = met(table, BOB, 1, 2.0)
    table.forget(alice)
    table.forget(bob)
    carol = met(table, CAROL, 1, 3.0)
    table.forget(carol)
    # Three departed, room for two: Alice, forgotten first, is no longer known.
    assert table.meet(ALICE, 5, 10.0)[1] is None
    assert table.meet(BOB, 5, 10.0)[1] == 2.0
    assert table.meet(CAROL, 5, 10.0)[1] == 3.0


# --------------------------------------------------------------- counters


def test_messages_in_order_open_no_gap() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    assert table.heard(peer, 2, 1.25) is False
    assert table.heard(peer, 3, 1.5) is False
    assert peer.last_counter == 3
    assert peer.missing == {}
    assert peer.in_order_at == 1.5
    assert peer.loss_check_at is None
    assert table.next_deadline() is None
    assert table.due_losses(100.0) == []


def test_a_small_gap_is_lost_only_once_still_open_after_the_reorder_window() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    assert table.heard(peer, 2, 1.25) is False
    assert table.heard(peer, 5, 2.0) is False  # 3 and 4 missing
    assert peer.last_counter == 5
    assert peer.missing == {3: 2.0, 4: 2.0}
    assert peer.gap_since == 1.25  # when every counter so far had last arrived
    assert peer.in_order_at == 1.25
    assert peer.loss_check_at == 2.5
    assert table.next_deadline() == 2.5

    assert table.due_losses(2.375) == []
    assert peer.missing == {3: 2.0, 4: 2.0}
    assert table.next_deadline() == 2.5

    assert table.due_losses(2.5) == [peer]
    assert peer.missing == {}
    assert peer.trust_after == 5  # nothing up to the last message heard is trusted
    assert peer.in_order_at == 2.5
    assert peer.loss_check_at is None
    assert table.next_deadline() is None
    assert table.due_losses(2.625) == []  # a loss is declared once


def test_a_gap_filled_by_late_messages_is_no_loss() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 4, 2.0)  # 2 and 3 missing
    assert table.heard(peer, 3, 2.125) is False  # reordered
    assert peer.missing == {2: 2.0}
    assert peer.loss_check_at == 2.5
    assert table.heard(peer, 2, 2.25) is False
    assert peer.missing == {}
    assert peer.last_counter == 4  # a late message does not move the counter back
    assert peer.in_order_at == 2.25
    assert peer.loss_check_at is None
    assert peer.trust_after == 1
    assert table.due_losses(2.5) == []
    assert table.next_deadline() is None
    assert peer.trust_after == 1


def test_a_partly_filled_gap_is_still_a_loss() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 4, 2.0)
    table.heard(peer, 2, 2.25)
    assert peer.missing == {3: 2.0}
    assert table.due_losses(2.5) == [peer]
    assert peer.missing == {}


def test_duplicates_and_messages_from_before_meeting_change_nothing() -> None:
    table = new_table()
    peer = met(table, ALICE, 5, 1.0)
    table.heard(peer, 7, 1.25)  # 6 missing
    assert table.heard(peer, 7, 1.375) is False
    assert table.heard(peer, 4, 1.5) is False
    assert peer.missing == {6: 1.25}
    assert peer.last_counter == 7
    assert peer.last_heard == 1.5
    assert table.due_losses(1.75) == [peer]


def test_each_gap_gets_its_whole_reorder_window() -> None:
    """A gap that opened while an older one was waited for is not judged by the
    older gap's deadline once the older gap has filled."""
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 3, 1.0)  # 2 missing, noticed at 1.0: due 1.5
    table.heard(peer, 5, 1.25)  # 4 missing, noticed at 1.25: due 1.75
    assert peer.missing == {2: 1.0, 4: 1.25}
    assert peer.loss_check_at == 1.5
    assert table.next_deadline() == 1.5
    table.heard(peer, 2, 1.375)  # the first gap fills
    assert peer.missing == {4: 1.25}

    assert table.due_losses(1.5) == []
    assert peer.loss_check_at == 1.75
    assert table.next_deadline() == 1.75
    assert table.due_losses(1.625) == []
    assert table.due_losses(1.75) == [peer]
    assert peer.missing == {}
    assert table.next_deadline() is None


def test_the_second_gap_fills_in_its_window_after_the_first_filled() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 3, 1.0)
    table.heard(peer, 5, 1.25)
    table.heard(peer, 2, 1.375)
    assert table.due_losses(1.5) == []
    table.heard(peer, 4, 1.625)
    assert table.due_losses(1.75) == []
    assert peer.trust_after == 1
    assert table.next_deadline() is None


def test_an_open_older_gap_declares_every_missing_message_lost_at_its_deadline() -> None:
    """Once the oldest gap is a loss, the messages missing since are lost with it
    (a single loss: nothing after it is trusted anyway)."""
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 3, 1.0)
    table.heard(peer, 5, 1.25)
    assert table.due_losses(1.5) == [peer]
    assert peer.missing == {}
    assert peer.trust_after == 5
    assert table.due_losses(1.75) == []


def test_a_new_gap_after_a_filled_one_gets_a_fresh_deadline() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 3, 1.0)
    table.heard(peer, 2, 1.125)  # filled: no check pending for the peer
    assert peer.loss_check_at is None
    table.heard(peer, 5, 1.25)  # 4 missing: due 1.75
    assert peer.gap_since == 1.125
    assert peer.loss_check_at == 1.75
    assert table.next_deadline() == 1.5  # the earlier check surfaces first
    assert table.due_losses(1.5) == []
    assert table.next_deadline() == 1.75
    assert table.due_losses(1.75) == [peer]


def test_gap_since_stays_at_the_first_gap_while_gaps_are_open() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 2, 1.125)
    table.heard(peer, 4, 1.25)
    table.heard(peer, 6, 1.375)
    assert peer.gap_since == 1.125
    assert peer.in_order_at == 1.125


def test_a_gap_of_max_missing_waits_and_one_more_is_a_loss_at_once() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    assert table.heard(peer, 2 + MAX_MISSING, 1.25) is False
    assert len(peer.missing) == MAX_MISSING
    assert peer.loss_check_at == 1.75

    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    assert table.heard(peer, 3 + MAX_MISSING, 1.25) is True
    assert peer.missing == {}
    assert peer.last_counter == 3 + MAX_MISSING
    assert peer.trust_after == 3 + MAX_MISSING
    assert peer.heard_since == 1.25  # the skipped messages may still be in flight
    assert peer.in_order_at == 1.25
    assert peer.loss_check_at is None
    assert table.next_deadline() is None


def test_gaps_that_add_up_past_max_missing_are_a_loss_at_once() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    assert table.heard(peer, 62, 1.25) is False  # 2..61 missing: 60
    assert table.heard(peer, 68, 1.375) is True  # 63..67 missing too: 65
    assert peer.missing == {}
    assert peer.trust_after == 68
    assert peer.loss_check_at is None
    # The check scheduled for the first gap finds nothing left to declare.
    assert table.due_losses(1.75) == []
    assert table.next_deadline() is None


def test_gaps_that_add_up_to_max_missing_still_wait() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    assert table.heard(peer, 62, 1.25) is False  # 60 missing
    assert table.heard(peer, 67, 1.375) is False  # 63..66 missing too: 64
    assert len(peer.missing) == MAX_MISSING
    assert table.due_losses(1.625) == []
    assert table.due_losses(1.75) == [peer]  # due by the older gap
    assert peer.missing == {}


def test_next_deadline_is_the_earliest_check_over_all_peers() -> None:
    table = new_table()
    alice = met(table, ALICE, 1, 1.0)
    bob = met(table, BOB, 1, 1.0)
    carol = met(table, CAROL, 1, 1.0)
    table.heard(bob, 3, 1.25)  # due 1.75
    table.heard(alice, 3, 1.5)  # due 2.0
    assert table.next_deadline() == 1.75
    assert table.due_losses(1.75) == [bob]
    assert table.next_deadline() == 2.0
    assert alice.missing == {2: 1.5}
    assert carol.loss_check_at is None
    table.heard(carol, 3, 1.875)  # due 2.375
    assert table.due_losses(2.0) == [alice]
    assert table.next_deadline() == 2.375
    assert table.due_losses(2.375) == [carol]
    assert table.next_deadline() is None


def test_peers_due_together_are_all_declared() -> None:
    table = new_table()
    alice = met(table, ALICE, 1, 1.0)
    bob = met(table, BOB, 1, 1.0)
    table.heard(alice, 3, 1.25)
    table.heard(bob, 3, 1.375)
    assert table.due_losses(10.0) == [alice, bob]


def test_a_forgotten_peer_is_not_declared_lost() -> None:
    table = new_table()
    alice = met(table, ALICE, 1, 1.0)
    table.heard(alice, 3, 1.25)
    table.forget(alice)
    assert table.due_losses(1.75) == []
    assert table.next_deadline() is None


# ------------------------------------------------------- acknowledgements


def test_an_acknowledgement_in_order_is_trusted_once() -> None:
    table = new_table()
    peer = trusting(table, counter=3)
    table.heard(peer, 4, WINDOW)
    table.park_acknowledgement(peer, 4, 100, WINDOW)
    table.heard(peer, 5, WINDOW)
    table.park_acknowledgement(peer, 5, 101, WINDOW)
    assert peer.parked_acknowledgements == [100, 101]
    assert table.trusted_acknowledgements(peer) == [100, 101]
    assert peer.parked_acknowledgements == []
    assert table.trusted_acknowledgements(peer) == []


def test_no_acknowledgement_is_trusted_while_a_gap_is_open() -> None:
    table = new_table()
    peer = trusting(table, counter=3)
    table.heard(peer, 5, 1.0)  # 4 missing
    table.park_acknowledgement(peer, 5, 100, 1.0)
    assert peer.parked_acknowledgements == [100]
    assert table.trusted_acknowledgements(peer) == []
    assert peer.parked_acknowledgements == [100]  # still waiting, not dropped
    table.heard(peer, 4, 1.25)
    assert table.trusted_acknowledgements(peer) == [100]


def test_acknowledgements_parked_during_a_gap_are_dropped_when_it_is_lost() -> None:
    table = new_table()
    peer = trusting(table, counter=3)
    table.heard(peer, 5, 1.0)
    table.park_acknowledgement(peer, 5, 100, 1.0)
    assert table.due_losses(1.5) == [peer]
    assert peer.parked_acknowledgements == []
    assert table.trusted_acknowledgements(peer) == []


def test_acknowledgements_are_dropped_on_a_loss_at_once() -> None:
    table = new_table()
    peer = trusting(table, counter=3)
    table.heard(peer, 5, 1.0)
    table.park_acknowledgement(peer, 5, 100, 1.0)
    assert table.heard(peer, 6 + MAX_MISSING, 1.125) is True
    assert peer.parked_acknowledgements == []
    assert table.trusted_acknowledgements(peer) == []


def test_none_is_trusted_from_a_message_numbered_trust_after_or_lower() -> None:
    table = new_table()
    peer = met(table, ALICE, 5, 0.0)
    table.park_acknowledgement(peer, 5, 100, 1.0)  # the meeting message itself
    table.park_acknowledgement(peer, 4, 101, 1.0)  # sent before it
    assert peer.parked_acknowledgements == []
    table.heard(peer, 6, 1.0)
    table.park_acknowledgement(peer, 6, 102, 1.0)
    assert table.trusted_acknowledgements(peer) == [102]


def test_after_a_declared_loss_none_is_trusted_up_to_the_last_message_heard() -> None:
    table = new_table()
    peer = trusting(table, counter=3)
    table.heard(peer, 5, 1.0)
    table.heard(peer, 6, 1.125)
    assert table.due_losses(1.5) == [peer]
    assert peer.trust_after == 6
    table.park_acknowledgement(peer, 6, 100, 1.5)
    table.park_acknowledgement(peer, 4, 101, 1.5)  # the lost one, arriving late
    assert peer.parked_acknowledgements == []
    table.heard(peer, 7, 1.625)
    table.park_acknowledgement(peer, 7, 102, 1.625)
    assert table.trusted_acknowledgements(peer) == [102]


def test_none_is_trusted_within_the_reorder_window_of_meeting() -> None:
    table = new_table()
    peer = met(table, ALICE, 1, 1.0)
    table.heard(peer, 2, 1.25)
    table.park_acknowledgement(peer, 2, 100, 1.25)
    table.heard(peer, 3, 1.375)
    table.park_acknowledgement(peer, 3, 101, 1.375)
    assert peer.parked_acknowledgements == []
    assert table.trusted_acknowledgements(peer) == []
    table.heard(peer, 4, 1.0 + WINDOW)
    table.park_acknowledgement(peer, 4, 102, 1.0 + WINDOW)
    assert table.trusted_acknowledgements(peer) == [102]


def test_none_is_trusted_within_the_reorder_window_of_a_loss_at_once() -> None:
    table = new_table()
    peer = trusting(table, counter=3)
    counter = 4 + MAX_MISSING + 1
    assert table.heard(peer, counter, 2.0) is True
    assert peer.heard_since == 2.0
    table.heard(peer, counter + 1, 2.25)
    table.park_acknowledgement(peer, counter + 1, 100, 2.25)
    assert peer.parked_acknowledgements == []
    table.heard(peer, counter + 2, 2.5)
    table.park_acknowledgement(peer, counter + 2, 101, 2.5)
    assert table.trusted_acknowledgements(peer) == [101]


def test_at_most_max_missing_acknowledgements_are_parked() -> None:
    table = new_table()
    peer = trusting(table, counter=3)
    table.heard(peer, 5, 1.0)  # a gap holds them parked
    for claim_counter in range(MAX_MISSING + 10):
        table.park_acknowledgement(peer, 5, 1000 + claim_counter, 1.0)
    assert peer.parked_acknowledgements == list(range(1000, 1000 + MAX_MISSING))
    table.heard(peer, 4, 1.125)
    assert table.trusted_acknowledgements(peer) == list(range(1000, 1000 + MAX_MISSING))
    # Trusting them made room again.
    table.park_acknowledgement(peer, 5, 5000, 1.125)
    assert peer.parked_acknowledgements == [5000]


def test_acknowledgements_are_kept_per_peer() -> None:
    table = new_table()
    alice = trusting(table, ALICE, counter=3)
    bob = trusting(table, BOB, counter=3)
    table.heard(alice, 5, 1.0)  # Alice has a gap, Bob none
    table.heard(bob, 4, 1.0)
    table.park_acknowledgement(alice, 5, 100, 1.0)
    table.park_acknowledgement(bob, 4, 200, 1.0)
    assert table.trusted_acknowledgements(alice) == []
    assert table.trusted_acknowledgements(bob) == [200]
    assert table.due_losses(1.5) == [alice]
    assert alice.parked_acknowledgements == []
    assert bob.trust_after == 1
