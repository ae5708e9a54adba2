"""The study-file reference (docs/studies.md) documents exactly the keys the parser takes: one table per
block, each after a ``<!-- keys: BLOCK -->`` marker, the key in backticks in its first column. A key added
to the parser (study/spec.py's constants, LMIOptions, data/tasks.py's signal kinds and source formats)
and not to the page fails here, and so does a documented key the parser would refuse."""

import dataclasses
import re
from pathlib import Path

import pytest

from scaling_assets.data import tasks
from scaling_assets.errors import StudyConfigError
from scaling_assets.metrics.lmi import LMIOptions
from scaling_assets.models import user
from scaling_assets.study import spec
from scaling_assets_tests.test_study_spec import MINIMAL, write

PAGE = Path(__file__).resolve().parents[1] / "docs" / "studies.md"
MARKER = re.compile(r"<!-- keys: (\w+) -->")
FIRST_CELL = re.compile(r"^\|\s*`([^`]+)`")

# a format's `options` in a study: its loader's options less its paths, and less the task and signals the
# dataset gives itself
SOURCE_FORMATS = {name: (fmt.paths, tuple(o for o in fmt.options if o not in (*fmt.paths, "task", "signals")))
                  for name, fmt in tasks.FORMATS.items()}
PARSER = {
    "study": spec.STUDY_KEYS,
    "split": spec.SPLIT_KEYS,
    "dataset": spec.DATASET_KEYS,
    "size_grid": spec.SIZE_GRID_KEYS,
    "quality_grid": spec.QUALITY_GRID_KEYS,
    "algorithm_grid": spec.ALGORITHM_GRID_KEYS,
    "lmi": ("preset", *(f.name for f in dataclasses.fields(LMIOptions))),
    "signal": (*tasks._SPEC_KINDS, *sorted(set().union(*tasks._SPEC_OPTIONS.values()))),
    "source": (spec.SIMULATED, *tasks.FORMATS),
    "model": (*user.KEYS, *sorted(set().union(*user.KEYS.values()))),
}


def documented_tables(text: str) -> dict[str, list[list[str]]]:
    """Each marked table's rows (cells stripped), header and delimiter rows left out."""
    tables: dict[str, list[list[str]]] = {}
    block = None
    for line in text.splitlines():
        marker = MARKER.search(line)
        if marker:
            block = marker.group(1)
            assert block not in tables, f"{PAGE}: two tables marked {block}"
            tables[block] = []
        elif block is not None and line.startswith("|"):
            tables[block].append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block is not None and tables[block] and not line.strip().startswith("|"):
            block = None  # the table ended
    return {block: rows[2:] for block, rows in tables.items()}


def keys_of(rows: list[list[str]]) -> list[str]:
    return [m.group(1) for row in rows if (m := FIRST_CELL.match("| " + row[0]))]


def test_every_block_of_the_parser_has_its_table():
    assert set(documented_tables(PAGE.read_text())) == set(PARSER)


@pytest.mark.parametrize("block", list(PARSER))
def test_the_page_documents_exactly_the_keys_the_parser_takes(block):
    documented = keys_of(documented_tables(PAGE.read_text())[block])
    assert len(documented) == len(set(documented)), f"{block}: a key documented twice: {documented}"
    missing, extra = set(PARSER[block]) - set(documented), set(documented) - set(PARSER[block])
    assert not missing and not extra, (f"docs/studies.md, table '{block}': the parser takes {sorted(missing)} "
                                       f"but the page does not document them; the page documents {sorted(extra)} "
                                       "which the parser does not take")


def test_each_source_format_lists_its_paths_and_options():
    rows = {keys_of([row])[0]: row for row in documented_tables(PAGE.read_text())["source"]}
    for name, (paths, options) in SOURCE_FORMATS.items():
        assert re.findall(r"`([^`]+)`", rows[name][1]) == list(paths), name
        assert sorted(re.findall(r"`([^`]+)`", rows[name][2])) == sorted(options), name


def test_every_table_row_has_a_type_a_default_and_an_example():
    for block, rows in documented_tables(PAGE.read_text()).items():
        if block == "source":
            continue
        for row in rows:
            assert len(row) == 5 and all(row), f"{block}: {row} needs key | type | default | example | meaning"


@pytest.mark.parametrize("old, new, message", [
    ("seeds: [7]", "seeds: [7]\ncolour: blue", r"top level: unknown keys \['colour'\]; expected some of name"),
    ("{validation_cells: 200}", "{validation_cells: 200, holdout: 5}", r"split: unknown keys \['holdout'\]"),
    ("genes: 50}", "genes: 50, colour: blue}", r"datasets\.cite: unknown keys \['colour'\]; expected some of task"),
    ("sizes: [100, 400]", "sizes: {grid: log, count: 2, smallest: 100, largest: 400}",
     r"datasets\.cite\.sizes: unknown keys \['largest'\]"),
])
def test_a_key_the_page_does_not_document_is_refused_naming_its_block(tmp_path, old, new, message):
    text = MINIMAL.format(root=tmp_path / "out")
    assert old in text
    with pytest.raises(StudyConfigError, match=message):
        spec.load_study(write(tmp_path, text.replace(old, new)))
