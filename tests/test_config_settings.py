"""Typed settings: the YAML keys, the schema's properties and the dataclass fields are one set per section."""

import dataclasses
import typing
from pathlib import Path

import pytest

from spectramind.config import settings as st
from spectramind.config.compose import compose, config_dir
from spectramind.config.schema import root_schema
from spectramind.errors import ConfigError

SECTIONS = {"paths": st.Paths, "data": st.Data, "fit": st.Fit, "trainer": st.Trainer, "predict": st.Predict,
            "evaluate": st.Evaluate, "reproduce": st.Reproduce}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml")) if group != "paths" else [""]


def _dataclass_of(hint):
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if dataclasses.is_dataclass(hint) else None


def _compare(cls, schema: dict, value, where: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(schema["properties"]) == fields, f"{where}: schema vs dataclass"
    assert set(schema.get("required", [])) == fields, f"{where}: every key is required (no default in code)"
    assert set(value) == fields, f"{where}: YAML vs dataclass"
    hints = typing.get_type_hints(cls)
    for name in fields:
        inner = _dataclass_of(hints[name])
        if inner is not None and value[name] is not None:
            _compare(inner, schema["properties"][name], value[name], f"{where}.{name}")


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_yaml_keys_schema_properties_and_fields_are_one_set(section):
    schema = root_schema()["properties"][section]
    for option in _options(section):
        cfg = compose([f"{section}={option}"] if option else [])
        _compare(SECTIONS[section], schema, cfg[section], f"{section}={option}")


def test_model_options_name_every_key_their_schema_branch_admits():
    branches = {b["if"]["properties"]["_target_"]["const"]: b["then"]
                for b in root_schema()["properties"]["model"]["allOf"]}
    for option in _options("model"):
        model = compose([f"model={option}"])["model"]
        assert set(model) == set(branches[model["_target_"]]["required"]) == set(
            branches[model["_target_"]]["properties"]), option


def test_the_root_settings_cover_every_section_of_the_schema():
    assert {f.name for f in dataclasses.fields(st.Settings)} == set(root_schema()["properties"])


def test_no_settings_field_has_a_default_in_code():
    classes = [c for c in vars(st).values() if dataclasses.is_dataclass(c)]
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f"{cls}.{f.name}"
        assert cls.__dataclass_params__.frozen, cls


def test_settings_are_built_typed_and_frozen():
    s = st.build(compose([]))
    assert s.data.calibrate.airs_rows == (8, 24) and isinstance(s.data.calibrate.airs_rows, tuple)
    assert s.trainer.effective_batch == s.trainer.batch_size * s.trainer.accumulate_grad_batches
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.trainer.max_epochs = 3  # type: ignore[misc]
    broken = compose([])
    broken["fit"].pop("drift_time_degree")
    with pytest.raises(ConfigError, match="^fit: expected the keys"):
        st.build(broken)
