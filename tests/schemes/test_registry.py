"""The scheme registry: names once, precision and mode pick a scheme, configs are strict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelquant import schemes
from modelquant.schemes import (
    QuantPlan,
    SchemeConfig,
    register_scheme,
    registered_precisions,
    registered_schemes,
    scheme_for,
)
from modelquant.stages.quantize import QuantizeConfig


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(schemes, "_REGISTRY", dict(schemes._REGISTRY))


def _noop(source: Path, out: Path, plan: QuantPlan[Any], ctx: Any) -> dict[str, Any]:
    return {}


def test_builtin_schemes_and_precisions() -> None:
    assert {"int8_static", "int8_dynamic", "fp32"} <= set(registered_schemes())
    assert {"int8", "fp32"} <= set(registered_precisions())
    assert scheme_for("int8", "static").name == "int8_static"
    assert scheme_for("int8", "dynamic").name == "int8_dynamic"
    assert scheme_for("fp32", "static").name == "fp32"  # one scheme: any mode picks it
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        scheme_for("int3")


def test_registering_a_name_twice_raises(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="'int8_static' is registered twice"):
        register_scheme("int8_static", precision="int9", config=SchemeConfig)(_noop)


def test_two_schemes_may_not_claim_one_precision_and_mode(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="both claim precision 'int8', mode 'static'"):
        register_scheme("int8_other", precision="int8", mode="static", config=SchemeConfig)(_noop)


def test_a_new_precision_is_one_registration(scratch_registry: None) -> None:
    class Bf16Config(SchemeConfig):
        keep_io_types: bool = True

    register_scheme("bf16", precision="bf16", config=Bf16Config)(_noop)
    assert "bf16" in registered_precisions()
    assert QuantizeConfig.model_validate({"precision": "bf16"}).scheme().name == "bf16"


@pytest.mark.parametrize("name", ["int8_static", "int8_dynamic", "fp32"])
def test_scheme_configs_reject_unknown_keys(name: str) -> None:
    config = registered_schemes()[name].config
    config.model_validate({})  # every setting has a default
    with pytest.raises(ValidationError, match="per_chanel"):
        config.model_validate({"per_chanel": True})


@pytest.mark.parametrize("name", ["int8_static", "int8_dynamic", "fp32"])
def test_stage_settings_feed_each_scheme_with_its_defaults(name: str) -> None:
    """The recipe writes scheme settings flat in `quantize:`; each scheme's defaults are the
    stage's, so a recipe means the same whether read by the stage or the scheme."""
    config = registered_schemes()[name].config
    stage = QuantizeConfig.model_fields
    for key, field in config.model_fields.items():
        assert key in stage, f"{name}.{key} has no key in quantize settings"
        assert field.get_default(call_default_factory=True) == stage[key].get_default(
            call_default_factory=True
        )


def test_settings_a_scheme_does_not_take_are_rejected() -> None:
    with pytest.raises(ValidationError, match="calibration: not a setting of scheme 'int8_dyn"):
        QuantizeConfig.model_validate({"mode": "dynamic", "calibration": {"method": "entropy"}})
    with pytest.raises(ValidationError, match="unknown precision 'int3'"):
        QuantizeConfig.model_validate({"overrides": [{"match": "x", "precision": "int3"}]})
