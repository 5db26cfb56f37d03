"""config.yaml validation: every rule, valid and invalid, with exact locations."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from migmanagerd.errors import EXIT_USAGE, SpecError
from migmanagerd.spec.config import load_config, parse_config
from migmanagerd.spec.profile import MigProfile
from migmanagerd.spec.types import DeviceFilter


def parse(text: str):
    return parse_config(textwrap.dedent(text), "c.yaml")


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(text)
    return info.value


def where(exc: SpecError) -> tuple[int, int]:
    assert exc.location is not None and exc.location.file == "c.yaml"
    return exc.location.line, exc.location.column


def one_entry(body: str) -> str:
    """A config 'a' with one entry whose keys are ``body`` (entry keys start at line 4, column 7)."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    first, rest = lines[0], lines[1:]
    out = ["version: v1", "mig-configs:", "  a:", f"    - {first}"]
    out += [f"      {line}" for line in rest]
    return "\n".join(out) + "\n"


# --- valid files --------------------------------------------------------------


def test_full_valid_file_builds_dataclasses():
    cf = parse(
        """\
        version: v1
        mig-configs:
          all-disabled:
            - devices: all
              mig-enabled: false
          mixed:
            - devices: [0, 2]
              device-filter: "0x20b010de"
              mig-enabled: true
              mig-devices:
                "1g.5gb": 2
                "1c.3g.20gb": 1
                "2g.10gb": 0
            - devices: all
              device-filter: ["0x20B210DE:0x147e10de", "0X233010DE"]
              mig-enabled: true
              mig-devices: {}
        """
    )
    assert cf.path == "c.yaml"
    assert list(cf.configs) == ["all-disabled", "mixed"]
    disabled = cf.configs["all-disabled"]
    assert disabled.loc.line == 3 and disabled.loc.column == 3
    (e,) = disabled.entries
    assert e.devices == "all" and e.mig_enabled is False and e.mig_devices == () and e.device_filters == ()
    first, second = cf.configs["mixed"].entries
    assert (first.config, first.position) == ("mixed", 0)
    assert (first.loc.line, first.loc.column) == (7, 7)
    assert first.devices == (0, 2)
    assert first.device_filters == (DeviceFilter(0x20B010DE),)
    # zero counts are dropped, file order kept, names canonical
    assert first.mig_devices == ((MigProfile.parse("1g.5gb"), 2), (MigProfile.parse("1c.3g.20gb"), 1))
    assert second.position == 1
    assert second.device_filters == (DeviceFilter(0x20B210DE, 0x147E10DE), DeviceFilter(0x233010DE))
    assert second.mig_enabled is True and second.mig_devices == ()


def test_disabled_with_empty_mig_devices_is_fine():
    cf = parse(one_entry("devices: all\nmig-enabled: false\nmig-devices: {}"))
    assert cf.configs["a"].entries[0].mig_devices == ()


def test_config_entry_selects_by_index_and_filter():
    cf = parse(one_entry('devices: [1]\ndevice-filter: "0x20B010DE:0x145F10DE"\nmig-enabled: false'))
    e = cf.configs["a"].entries[0]
    assert e.selects(1, 0x20B010DE, 0x145F10DE)
    assert not e.selects(1, 0x20B010DE, 0x147E10DE)
    assert not e.selects(0, 0x20B010DE, 0x145F10DE)


def test_load_config_reads_file(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text(one_entry("devices: all\nmig-enabled: false"))
    cf = load_config(p)
    assert cf.path == str(p) and list(cf.configs) == ["a"]


def test_load_config_missing_file():
    with pytest.raises(SpecError) as info:
        load_config("/nonexistent/config.yaml")
    assert "/nonexistent/config.yaml" in str(info.value) and "not found" in str(info.value)
    assert info.value.exit_code == EXIT_USAGE


# --- top level ------------------------------------------------------------------


def test_version_missing():
    e = error("mig-configs: {}\n")
    assert where(e) == (1, 1) and "missing required key 'version'" in e.message


def test_version_wrong():
    e = error("version: v2\nmig-configs: {}\n")
    assert where(e) == (1, 10) and e.field == "version"
    assert str(e) == "c.yaml:1:10: field 'version': unsupported version 'v2' (supported: v1)"


def test_version_not_a_string():
    e = error("version: [v1]\nmig-configs: {}\n")
    assert where(e) == (1, 10) and "unsupported version a list" in e.message


def test_mig_configs_missing():
    e = error("version: v1\n")
    assert where(e) == (1, 1) and "missing required key 'mig-configs'" in e.message


def test_unknown_top_level_key():
    e = error("version: v1\nmig-config: {}\n")
    assert where(e) == (2, 1) and e.field == "mig-config" and "unknown key 'mig-config'" in e.message


def test_root_not_a_mapping():
    e = error("- version: v1\n")
    assert where(e) == (1, 1) and "expected a mapping" in e.message


def test_empty_file():
    e = error("")
    assert where(e) == (1, 1) and "empty" in e.message


def test_no_configs():
    e = error("version: v1\nmig-configs: {}\n")
    assert where(e) == (2, 14) and e.field == "mig-configs" and "no configs" in e.message


def test_mig_configs_not_a_mapping():
    e = error("version: v1\nmig-configs: [a]\n")
    assert where(e) == (2, 14) and "expected a mapping, got a list" in e.message


def test_yaml_syntax_error_is_located():
    e = error("version: v1\nmig-configs:\n  a: [\n")
    assert e.location is not None and e.location.line >= 3
    assert "YAML syntax error" in e.message


def test_duplicate_config_name():
    text = one_entry("devices: all\nmig-enabled: false") + "  a:\n    - devices: all\n      mig-enabled: false\n"
    e = error(text)
    assert where(e) == (6, 3) and "duplicate key 'a' (first defined at line 3)" in e.message


def test_empty_config_name():
    e = error('version: v1\nmig-configs:\n  "":\n    - devices: all\n      mig-enabled: false\n')
    assert where(e) == (3, 3) and "config name must not be empty" in e.message


def test_config_name_with_newline_is_rejected_on_one_line():
    e = error('version: v1\nmig-configs:\n  "a\\nb":\n    - devices: all\n      mig-enabled: false\n')
    assert where(e) == (3, 3) and e.message == "key 'a\\nb' contains a control character"
    assert "\n" not in str(e)


def test_bad_filter_with_control_character_stays_one_line():
    e = error(one_entry('devices: all\ndevice-filter: "0x\\t"\nmig-enabled: false'))
    assert "'0x\\t' is not a PCI device filter" in e.message and "\t" not in str(e)


# --- configs and entries --------------------------------------------------------


def test_config_not_a_list():
    e = error("version: v1\nmig-configs:\n  a:\n    devices: all\n")
    assert where(e) == (4, 5) and e.context == "config 'a'" and "expected a list, got a mapping" in e.message


def test_config_with_no_entries():
    e = error("version: v1\nmig-configs:\n  a: []\n")
    assert where(e) == (3, 6) and e.context == "config 'a'" and "at least one entry" in e.message


def test_entry_not_a_mapping():
    e = error("version: v1\nmig-configs:\n  a:\n    - all\n")
    assert where(e) == (4, 7) and e.context == "config 'a' entry 0" and "expected a mapping, got a string" in e.message


def test_entry_index_in_context():
    text = one_entry("devices: all\nmig-enabled: false") + "    - devices: all\n      mig-enabled: maybe\n"
    e = error(text)
    assert where(e) == (7, 20) and e.context == "config 'a' entry 1" and e.field == "mig-enabled"


def test_unknown_entry_key_is_pinned_to_the_key():
    e = error(one_entry("devices: all\nmig-enable: true"))
    assert where(e) == (5, 7)
    assert str(e) == (
        "c.yaml:5:7: config 'a' entry 0: field 'mig-enable': unknown key 'mig-enable' "
        "(allowed: devices, device-filter, mig-enabled, mig-devices)"
    )


@pytest.mark.parametrize("missing, body", [("devices", "mig-enabled: false"), ("mig-enabled", "devices: all")])
def test_required_entry_keys(missing, body):
    e = error(one_entry(body))
    assert where(e) == (4, 7) and e.context == "config 'a' entry 0"
    assert f"missing required key '{missing}'" in e.message


def test_mig_devices_required_when_enabled():
    e = error(one_entry("devices: all\nmig-enabled: true"))
    assert where(e) == (4, 7) and "missing required key 'mig-devices'" in e.message and "{}" in e.message


def test_duplicate_entry_key():
    e = error(one_entry("devices: all\nmig-enabled: false\ndevices: [0]"))
    assert where(e) == (6, 7) and "duplicate key 'devices'" in e.message


# --- mig-enabled ------------------------------------------------------------------


@pytest.mark.parametrize("value, got", [('"yes"', "a string"), ("1", "an integer"), ("null", "null"), ("[true]", "a list")])
def test_mig_enabled_must_be_boolean(value, got):
    e = error(one_entry(f"devices: all\nmig-enabled: {value}"))
    assert where(e) == (5, 20) and e.field == "mig-enabled"
    assert e.message == f"expected true or false, got {got}"


# --- devices ------------------------------------------------------------------------


def test_devices_list_of_ints():
    cf = parse(one_entry("devices: [3, 0, 7]\nmig-enabled: false"))
    assert cf.configs["a"].entries[0].devices == (3, 0, 7)


@pytest.mark.parametrize(
    "value, col, message",
    [
        ("some", 16, "expected 'all' or a list of GPU indices, got 'some'"),
        ("ALL", 16, "expected 'all' or a list of GPU indices, got 'ALL'"),
        ("0", 16, "expected 'all' or a list of GPU indices, got an integer"),
        ("{0: 1}", 16, "expected 'all' or a list of GPU indices, got a mapping"),
        ("[]", 16, "the list of GPU indices is empty"),
    ],
)
def test_devices_bad_shape(value, col, message):
    e = error(one_entry(f"devices: {value}\nmig-enabled: false"))
    assert where(e) == (4, col) and e.field == "devices" and e.message == message


@pytest.mark.parametrize(
    "value, col, field, message",
    [
        ("[0, -1]", 20, "devices[1]", "must be at least 0, got -1"),
        ("[0, 1.5]", 20, "devices[1]", "expected an integer, got a number"),
        ('["1"]', 17, "devices[0]", "expected an integer, got a string"),
        ("[true]", 17, "devices[0]", "expected an integer, got a boolean"),
        ("[2, 5, 2]", 23, "devices[2]", "GPU index 2 is listed twice (also devices[0])"),
    ],
)
def test_devices_bad_items(value, col, field, message):
    e = error(one_entry(f"devices: {value}\nmig-enabled: false"))
    assert where(e) == (4, col) and e.field == field and e.message == message


# --- device-filter --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"0x20B010DE"', (DeviceFilter(0x20B010DE),)),
        ('"0x20b010de"', (DeviceFilter(0x20B010DE),)),
        ('"0x20B010DE:0x145F10DE"', (DeviceFilter(0x20B010DE, 0x145F10DE),)),
        ('["0x20B010DE", "0x20B210DE"]', (DeviceFilter(0x20B010DE), DeviceFilter(0x20B210DE))),
    ],
)
def test_device_filter_valid(value, expected):
    cf = parse(one_entry(f"devices: all\ndevice-filter: {value}\nmig-enabled: false"))
    assert cf.configs["a"].entries[0].device_filters == expected


@pytest.mark.parametrize(
    "value, col, field, message",
    [
        ('"20B010DE"', 22, "device-filter", "is not a PCI device filter"),
        ('"0x20B0"', 22, "device-filter", "is not a PCI device filter"),
        ('"0x20B010DEAA"', 22, "device-filter", "is not a PCI device filter"),
        ('"0x20B010DE:"', 22, "device-filter", "is not a PCI device filter"),
        ('"0x20B010DE:0x145F"', 22, "device-filter", "is not a PCI device filter"),
        ('"0xZZB010DE"', 22, "device-filter", "is not a PCI device filter"),
        ("[]", 22, "device-filter", "the list of device filters is empty"),
        ('["0x20B010DE", "bad"]', 37, "device-filter[1]", "'bad' is not a PCI device filter"),
        ("[0x20B010DE]", 23, "device-filter[0]", 'got an integer; quote PCI ids, e.g. "0x20B010DE"'),
        ("0x20b010de", 22, "device-filter", 'got an integer; quote PCI ids, e.g. "0x20B010DE"'),
        ("true", 22, "device-filter", "expected a string, got a boolean"),
        ("{a: b}", 22, "device-filter", "expected a PCI id string or a list of them, got a mapping"),
    ],
)
def test_device_filter_invalid(value, col, field, message):
    e = error(one_entry(f"devices: all\ndevice-filter: {value}\nmig-enabled: false"))
    assert where(e) == (5, col) and e.field == field and message in e.message


# --- mig-devices ------------------------------------------------------------------------


def test_mig_devices_nonempty_with_mig_disabled():
    e = error(one_entry("devices: all\nmig-enabled: false\nmig-devices:\n  1g.5gb: 1"))
    assert where(e) == (6, 7) and e.field == "mig-devices" and "mig-enabled is false" in e.message


def test_mig_devices_only_zeros():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices:\n  1g.5gb: 0\n  2g.10gb: 0"))
    assert where(e) == (6, 7) and e.field == "mig-devices" and "every count is 0" in e.message


def test_mig_devices_null():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices:"))
    assert where(e) == (6, 19) and e.field == "mig-devices"
    assert "expected a mapping of MIG profile to count" in e.message and "got null" in e.message


def test_mig_devices_list():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices: [1g.5gb]"))
    assert where(e) == (6, 20) and "got a list" in e.message


def test_bad_profile_name_is_pinned_to_the_key():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices:\n  1g.5gb: 1\n  3g.20gbx: 1"))
    assert where(e) == (8, 9) and e.field == "mig-devices.3g.20gbx"
    assert e.context == "config 'a' entry 0"
    assert e.message.startswith("'3g.20gbx' is not a MIG profile name")


def test_profile_with_bad_attribute():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices:\n  1g.5gb+foo: 1"))
    assert where(e) == (7, 9) and "unknown attribute '+foo'" in e.message


def test_profile_ci_larger_than_gi():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices:\n  4c.3g.20gb: 1"))
    assert where(e) == (7, 9) and "larger than its GPU instance" in e.message


def test_same_profile_spelled_twice():
    e = error(one_entry('devices: all\nmig-enabled: true\nmig-devices:\n  "3g.20gb": 1\n  "3c.3g.20gb": 1'))
    assert where(e) == (8, 9) and e.field == "mig-devices.3c.3g.20gb"
    assert "same MIG profile as '3g.20gb' (line 7)" in e.message


def test_same_profile_different_case():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices:\n  1g.5gb: 1\n  1G.5GB: 1"))
    assert where(e) == (8, 9) and "same MIG profile" in e.message


@pytest.mark.parametrize(
    "value, message",
    [
        ("1.5", "expected an integer, got a number"),
        ("true", "expected an integer, got a boolean"),
        ('"2"', "expected an integer, got a string"),
        ("-1", "must be at least 0, got -1"),
        ("", "expected an integer, got null"),
    ],
)
def test_bad_counts_are_pinned_to_the_value(value, message):
    e = error(one_entry(f"devices: all\nmig-enabled: true\nmig-devices:\n  1g.5gb: {value}"))
    assert e.field == "mig-devices.1g.5gb" and e.message == message
    line, col = where(e)
    assert line == 7 and (col == 17 or value == "")


def test_error_message_is_one_line():
    e = error(one_entry("devices: all\nmig-enabled: true\nmig-devices:\n  1g.5gb: 1.5"))
    assert str(e) == "c.yaml:7:17: config 'a' entry 0: field 'mig-devices.1g.5gb': expected an integer, got a number"
    assert "\n" not in str(e)


# --- properties -------------------------------------------------------------------


_profiles = st.sampled_from(["1g.5gb", "2g.10gb", "3g.20gb", "1c.3g.20gb", "1g.10gb+me", "7g.40gb", "1g.24gb+gfx"])
_entries = st.fixed_dictionaries(
    {
        "devices": st.one_of(st.just("all"), st.lists(st.integers(0, 15), min_size=1, max_size=4, unique=True)),
        "mig-enabled": st.booleans(),
    },
    optional={"device-filter": st.lists(st.integers(0, 2**32 - 1).map(lambda v: f"0x{v:08X}"), min_size=1, max_size=3)},
).flatmap(
    lambda e: st.dictionaries(_profiles, st.integers(1, 7), max_size=3).map(
        lambda md: {**e, "mig-devices": md if e["mig-enabled"] else {}}
    )
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9.-]{0,12}", fullmatch=True), st.lists(_entries, min_size=1, max_size=3), min_size=1, max_size=3))
def test_valid_configs_round_trip(configs):
    text = yaml.safe_dump({"version": "v1", "mig-configs": configs}, sort_keys=False)
    cf = parse_config(text, "gen.yaml")
    assert list(cf.configs) == list(configs)
    for name, entries in configs.items():
        parsed = cf.configs[name].entries
        assert len(parsed) == len(entries)
        for raw, entry in zip(entries, parsed, strict=True):
            assert entry.devices == ("all" if raw["devices"] == "all" else tuple(raw["devices"]))
            assert entry.mig_enabled is raw["mig-enabled"]
            assert [str(f) for f in entry.device_filters] == raw.get("device-filter", [])
            assert [(str(p), n) for p, n in entry.mig_devices] == [
                (str(MigProfile.parse(k)), v) for k, v in raw["mig-devices"].items()
            ]


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.floats(allow_nan=False), st.text(max_size=8),
                     st.sampled_from(["all", "1g.5gb", "0x20B010DE", "v1"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["devices", "mig-enabled", "mig-devices", "device-filter", "1g.5gb"])), inner, max_size=3)),
                       max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_yaml_value_is_accepted_or_a_spec_error(entry):
    """No input makes the parser fail with anything but a located SpecError."""
    text = yaml.safe_dump({"version": "v1", "mig-configs": {"a": [entry]}})
    try:
        parse_config(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.location is not None and exc.location.file == "fuzz.yaml"
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_accepted_or_a_spec_error(text):
    try:
        parse_config(text, "fuzz.yaml")
    except SpecError as exc:
        assert str(exc).startswith("fuzz.yaml:")
