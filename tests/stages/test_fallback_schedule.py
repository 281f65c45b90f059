"""The fallback schedule: escalating and growing groups of the worst layers."""

from __future__ import annotations

from modelquant.stages.fallback import schedule

RANKED = [f"L{i}" for i in range(1, 10)]


def test_auto_goes_w8a16_then_float_in_doubling_groups() -> None:
    assert schedule(RANKED, 4, "auto", w8a16=True) == [
        {"L1": "w8a16"},
        {"L1": "fp32", "L2": "w8a16"},
        {"L1": "fp32", "L2": "fp32", "L3": "w8a16", "L4": "w8a16"},
        {**{f"L{i}": "fp32" for i in range(1, 5)}, **{f"L{i}": "w8a16" for i in range(5, 9)}},
    ]


def test_without_16_bit_activations_layers_go_to_float() -> None:
    assert schedule(RANKED, 3, "auto", w8a16=False) == [
        {"L1": "fp32"},
        {"L1": "fp32", "L2": "fp32"},
        {f"L{i}": "fp32" for i in range(1, 5)},
    ]
    assert schedule(RANKED, 2, "fp32", w8a16=True) == [{"L1": "fp32"}, {"L1": "fp32", "L2": "fp32"}]


def test_the_schedule_stops_when_everything_is_float() -> None:
    plans = schedule(["a", "b"], 8, "fp32", w8a16=False)
    assert plans == [{"a": "fp32"}, {"a": "fp32", "b": "fp32"}]
    assert schedule(RANKED, 4, "off", w8a16=True) == []
