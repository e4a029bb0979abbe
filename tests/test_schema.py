"""The data dictionary: one declaration, consistent layers, generated docs up to date."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from kidresearch.cli import main
from kidresearch.schema import RAW_FEEDS, RESEARCH_TABLES, data_dictionary_markdown, table

ROOT = Path(__file__).resolve().parents[1]


def test_docs_data_dictionary_is_up_to_date():
    committed = (ROOT / "docs" / "data_dictionary.md").read_text(encoding="utf-8")
    assert committed == data_dictionary_markdown(), "run `kid docs` to regenerate the docs"


def test_kid_docs_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "dd.md"
    stale.write_text("# old\n")
    assert main(["docs", "--out", str(stale), "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert main(["docs", "--out", str(stale)]) == 0
    assert main(["docs", "--out", str(stale), "--check"]) == 0


def test_no_research_table_holds_a_direct_identifier():
    identifiers = {c.name for t in RAW_FEEDS.values() for c in t.columns if c.identifier}
    assert {"nhs_number", "date_of_birth", "uprn"} <= identifiers
    for t in RESEARCH_TABLES.values():
        assert not identifiers & set(t.column_names), t.name


def test_every_raw_person_feed_has_a_research_table_keyed_by_person_id():
    for name, raw in RAW_FEEDS.items():
        if name in {"registrations", "deaths"}:
            continue  # these become the persons table
        research = RESEARCH_TABLES[name]
        assert research.column_names[0] == "person_id"
        assert raw.date_column == research.date_column


def test_arrow_schema_types_and_nullability():
    schema = table("inpatient_spells", "raw").arrow_schema()
    assert schema.field("admission_date").type == pa.date32()
    assert schema.field("nhs_number").nullable  # missing NHS numbers arrive and are quarantined
    assert not schema.field("admission_method").nullable


def test_patterns_are_valid_regexes_and_accept_typical_codes():
    examples = {
        "lsoa_code": "E01024000",
        "practice_code": "G82001",
        "snomed_code": "22298006",
        "primary_diagnosis_icd10": "J441",
        "bnf_code": "0212000B0",
    }
    for t in [*RAW_FEEDS.values(), *RESEARCH_TABLES.values()]:
        for c in t.columns:
            if c.pattern and c.name in examples:
                assert re.fullmatch(c.pattern, examples[c.name]), (t.name, c.name)


def test_unknown_table_error_lists_the_tables():
    with pytest.raises(KeyError, match="persons"):
        table("people")
