"""Generated values round-trip through the declarations, both ways."""

from hypothesis import given

from protocols.wire.stack import Layer, build_stack, fill_payloads, parse_stack
from tests.unit.frame_strategies import frame_layers


@given(frame_layers)
def test_generated_stacks_round_trip(layers: tuple[Layer, ...]) -> None:
    frame = build_stack(layers)
    parsed = parse_stack(frame)
    assert build_stack(parsed) == frame
    # Fragments and unknown protocols stop the dissection early.
    assert parsed == fill_payloads(layers)[: len(parsed)]
