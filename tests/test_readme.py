"""The README's configuration reference covers every setting, with its real default."""

from pathlib import Path

from tweetgen.config import SETTING_NAMES, Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CONFIGURATION = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


def test_every_setting_is_documented_with_its_default() -> None:
    rows = {}
    for line in CONFIGURATION.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].strip("`") in SETTING_NAMES:
            rows[cells[0].strip("`")] = cells[1].strip("`")
    assert SETTING_NAMES - set(rows) == set(), "settings missing from the README table"
    assert set(rows) - SETTING_NAMES == set(), "README documents settings that do not exist"
    defaults = Settings()
    for name, documented in rows.items():
        value = getattr(defaults, name)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, float) and value.is_integer() and "." not in documented:
            value = int(value)
        assert documented.replace("'", '"') == str(value).replace("'", '"'), name
