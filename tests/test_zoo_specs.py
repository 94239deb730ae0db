"""Zoo specs: loading, overlay on a base, allowlisted keys, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import ConfigError, Registry, load_workspace
from zoo import load_spec, load_zoo, register_specs, resolve_spec


def _write_spec(workspace_dir: Path, name: str, text: str) -> Path:
    path = workspace_dir / "zoo" / f"{name}.yaml"
    path.write_text(text)
    return path


def _resolve(workspace_dir: Path, registry: Registry, name: str):
    workspace = load_workspace(workspace_dir)
    zoo = load_zoo(workspace.specs_dir)
    assert not zoo.errors, zoo.errors
    spec_file = next(s for s in zoo.specs if s.spec.name == name)
    return resolve_spec(spec_file, zoo, workspace, registry)


def test_overrides_apply_over_the_base_and_keep_its_other_keys(workspace_dir: Path, registry: Registry) -> None:
    resolved = _resolve(workspace_dir, registry, "flash")
    assert resolved.config["model"] == "sim-flash"
    assert resolved.config["params"] == {"temperature": 0, "max_tokens": 64}
    assert resolved.skill_text.startswith("# Support ticket triage")


def test_a_base_spec_that_is_registered_becomes_the_parent(workspace_dir: Path, registry: Registry) -> None:
    baseline = registry.register(_resolve(workspace_dir, registry, "baseline").new_variant()).variant
    assert _resolve(workspace_dir, registry, "cheap-mini").parent == baseline.version_id


def test_base_champion_resolves_against_the_current_champion(workspace_dir: Path, registry: Registry) -> None:
    baseline = registry.register(_resolve(workspace_dir, registry, "baseline").new_variant()).variant
    registry.promote("support-triage", baseline.version_id, "a", None, None)
    _write_spec(workspace_dir, "hot", "slot: support-triage\nname: hot\nbase: champion\noverrides:\n  temperature: 0.7\n")
    resolved = _resolve(workspace_dir, registry, "hot")
    assert resolved.parent == baseline.version_id
    assert resolved.config["params"]["temperature"] == 0.7 and resolved.config["model"] == "sim-large"


def test_status_and_train_block_do_not_change_the_fingerprint(workspace_dir: Path, registry: Registry) -> None:
    before = _resolve(workspace_dir, registry, "flash").fingerprint
    path = workspace_dir / "zoo" / "flash.yaml"
    path.write_text(path.read_text() + "status: retired\ntrain:\n  optimizer: skillopt\n"
                    "  optimizer_model: {provider: sim, model: sim-optimizer}\n"
                    "  dataset: {from: file, path: ../tickets.jsonl}\n")
    assert _resolve(workspace_dir, registry, "flash").fingerprint == before


def test_inline_skill_text_and_explicit_file_form_are_both_accepted(workspace_dir: Path, registry: Registry) -> None:
    _write_spec(workspace_dir, "inline", "slot: support-triage\nname: inline\noverrides:\n  skill: Be brief.\n")
    _write_spec(workspace_dir, "explicit", "slot: support-triage\nname: explicit\noverrides:\n  skill: {file: ../skills/careful.md}\n")
    assert _resolve(workspace_dir, registry, "inline").skill_text == "Be brief."
    assert "Think carefully" in _resolve(workspace_dir, registry, "explicit").skill_text


def test_malformed_yaml_is_reported_with_file_line_and_column(workspace_dir: Path) -> None:
    path = _write_spec(workspace_dir, "broken", "slot: support-triage\nname: broken\noverrides:\n  model: [sim-mini\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: invalid YAML"):
        load_spec(path)


def test_an_undefined_alias_is_reported_by_name_at_its_position(workspace_dir: Path) -> None:
    path = _write_spec(workspace_dir, "alias", "slot: support-triage\nname: alias\noverrides:\n  model: *large\n")
    with pytest.raises(ConfigError, match=rf"{path}:4:10: invalid YAML: found undefined alias 'large'"):
        load_spec(path)


def test_a_control_character_is_reported_as_invalid_yaml(workspace_dir: Path) -> None:
    path = _write_spec(workspace_dir, "control", "slot: support-triage\nname: control\x01\n")
    with pytest.raises(ConfigError, match=rf"{path}: invalid YAML: unacceptable character #x0001"):
        load_spec(path)


def test_a_misspelled_override_names_the_key_the_file_and_the_allowed_keys(workspace_dir: Path) -> None:
    path = _write_spec(workspace_dir, "typo", "slot: support-triage\nname: typo\noverrides:\n  temprature: 0.3\n")
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert f"{path}:4:3: overrides.temprature: unknown key (did you mean 'temperature'?)" in message
    assert "allowed keys: max_tokens, model, provider, response_format, seed, skill, stop, temperature, top_p" in message


def test_python_specs_allow_only_their_own_keys(workspace_dir: Path) -> None:
    path = _write_spec(
        workspace_dir, "rules",
        "slot: support-triage\nname: rules\nkind: python\noverrides:\n  entrypoint: pkg.rules:answer\n  model: x\n",
    )
    with pytest.raises(ConfigError, match="overrides.model: unknown key; allowed keys: entrypoint, params, price_per_call_usd"):
        load_spec(path)


def test_wrong_types_and_out_of_range_values_are_named(workspace_dir: Path) -> None:
    path = _write_spec(
        workspace_dir, "types",
        "slot: support-triage\nname: types\noverrides:\n  temperature: hot\n  max_tokens: -5\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert f"{path}:4:3: overrides.temperature: Input should be a valid number" in message
    assert f"{path}:5:3: overrides.max_tokens: Input should be greater than 0" in message


def test_an_unknown_kind_and_a_bad_name_are_refused(workspace_dir: Path) -> None:
    kind = _write_spec(workspace_dir, "kind", "slot: support-triage\nname: k\nkind: pyhton\n")
    with pytest.raises(ConfigError, match="kind: expected 'chat' or 'python', got 'pyhton'"):
        load_spec(kind)
    name = _write_spec(workspace_dir, "name", "slot: support-triage\nname: Has Spaces\n")
    with pytest.raises(ConfigError, match="name: .*is not valid"):
        load_spec(name)


def test_a_missing_skill_file_is_named(workspace_dir: Path, registry: Registry) -> None:
    _write_spec(workspace_dir, "lost", "slot: support-triage\nname: lost\noverrides:\n  skill: ../skills/nowhere.md\n")
    with pytest.raises(ConfigError, match=r"lost.yaml: overrides.skill: skill file '../skills/nowhere.md' does not exist"):
        _resolve(workspace_dir, registry, "lost")


def test_a_skill_path_outside_the_workspace_is_refused(workspace_dir: Path, registry: Registry) -> None:
    (workspace_dir.parent / "secret.md").write_text("not yours")
    _write_spec(workspace_dir, "escape", "slot: support-triage\nname: escape\noverrides:\n  skill: ../../secret.md\n")
    with pytest.raises(ConfigError, match="outside the workspace"):
        _resolve(workspace_dir, registry, "escape")


def test_a_base_that_does_not_resolve_is_explained(workspace_dir: Path, registry: Registry) -> None:
    _write_spec(workspace_dir, "orphan", "slot: support-triage\nname: orphan\nbase: nobody\n")
    with pytest.raises(ConfigError, match="base: 'nobody' does not resolve"):
        _resolve(workspace_dir, registry, "orphan")


def test_base_champion_without_a_champion_says_what_to_do(workspace_dir: Path, registry: Registry) -> None:
    _write_spec(workspace_dir, "early", "slot: support-triage\nname: early\nbase: champion\n")
    with pytest.raises(ConfigError, match="has no champion yet; use `base: defaults`"):
        _resolve(workspace_dir, registry, "early")


def test_a_cycle_of_bases_is_reported_with_its_path(workspace_dir: Path, registry: Registry) -> None:
    _write_spec(workspace_dir, "ping", "slot: support-triage\nname: ping\nbase: pong\n")
    _write_spec(workspace_dir, "pong", "slot: support-triage\nname: pong\nbase: ping\n")
    with pytest.raises(ConfigError, match="cycle: ping -> pong -> ping"):
        _resolve(workspace_dir, registry, "ping")


def test_an_unconfigured_slot_or_provider_is_named(workspace_dir: Path, registry: Registry) -> None:
    _write_spec(workspace_dir, "elsewhere", "slot: billing-bot\nname: elsewhere\n")
    _write_spec(workspace_dir, "noprov", "slot: support-triage\nname: noprov\noverrides:\n  provider: azure\n")
    with pytest.raises(ConfigError, match="slot: 'billing-bot' is not configured"):
        _resolve(workspace_dir, registry, "elsewhere")
    with pytest.raises(ConfigError, match="provider 'azure' is not configured"):
        _resolve(workspace_dir, registry, "noprov")


def test_one_bad_spec_never_stops_the_others_from_registering(workspace_dir: Path, registry: Registry) -> None:
    _write_spec(workspace_dir, "orphan", "slot: support-triage\nname: orphan\nbase: nobody\n")
    (workspace_dir / "zoo" / "garbage.yaml").write_text("slot: [\n")
    workspace = load_workspace(workspace_dir)
    zoo = load_zoo(workspace.specs_dir)
    outcomes = register_specs(zoo.specs, zoo, workspace, registry)
    assert len(zoo.errors) == 1 and "garbage.yaml" in zoo.errors[0]
    assert sorted(o.spec_file.spec.name for o in outcomes if o.error) == ["orphan"]
    assert len(registry.variants()) == 5


def test_a_bad_train_block_is_reported_with_its_key(workspace_dir: Path) -> None:
    path = _write_spec(workspace_dir, "trainee", "slot: support-triage\nname: trainee\ntrain:\n  optimizer: gradient-descent\n")
    with pytest.raises(ConfigError, match=r"trainee.yaml:\d+:\d+: train"):
        load_spec(path)


def test_two_specs_with_one_name_in_a_slot_are_an_error(workspace_dir: Path) -> None:
    _write_spec(workspace_dir, "twin", "slot: support-triage\nname: flash\n")
    zoo = load_zoo(workspace_dir / "zoo")
    assert any("name 'flash' is already used" in error for error in zoo.errors)
