import pytest

from migmanagerd.spec.profile import MigProfile, ProfileNameError


@pytest.mark.parametrize(
    "text, canonical, gi, c",
    [
        ("1g.5gb", "1g.5gb", "1g.5gb", 1),
        ("3g.20gb", "3g.20gb", "3g.20gb", 3),
        ("1c.3g.20gb", "1c.3g.20gb", "3g.20gb", 1),
        ("3c.3g.20gb", "3g.20gb", "3g.20gb", 3),
        ("1g.10gb+me", "1g.10gb+me", "1g.10gb+me", 1),
        ("1g.24gb+me.all", "1g.24gb+me.all", "1g.24gb+me.all", 1),
        ("1g.24gb-me", "1g.24gb-me", "1g.24gb-me", 1),
        ("1G.5GB", "1g.5gb", "1g.5gb", 1),
        ("1g.24gb+me,gfx", "1g.24gb+gfx,me", "1g.24gb+gfx,me", 1),
    ],
)
def test_parse_canonical(text, canonical, gi, c):
    p = MigProfile.parse(text)
    assert str(p) == canonical
    assert p.gi_name == gi
    assert p.compute_slices == c
    assert MigProfile.parse(str(p)) == p


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1g", "not a MIG profile name"),
        ("4c.3g.20gb", "larger than its GPU instance"),
        ("0g.5gb", "at least 1 slice"),
        ("1g.0gb", "at least 1gb"),
        ("1g.5gb+foo", "unknown attribute '+foo'"),
        ("1g.5gb-gfx", "unknown attribute '-gfx'"),
        ("1g.5gb+", "empty attribute"),
        ("1g.5gb+me,me", "repeated"),
        ("1g.5gb+me-me", "not a MIG profile name"),
        ("0c.1g.5gb", "at least 1 slice"),
    ],
)
def test_parse_rejects_with_reason(text, reason):
    with pytest.raises(ProfileNameError, match=reason.replace("+", r"\+")):
        MigProfile.parse(text)


def test_mapping_keys_keep_their_text():
    from migmanagerd.spec.source import load_yaml_text

    root = load_yaml_text("off: 1\nyes: 2\n0x20B0: 3\n'quoted': 4\n123: 5\n", "k.yaml")
    assert list(root.value) == ["off", "yes", "0x20B0", "quoted", "123"]
