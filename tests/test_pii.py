"""PII redaction: per-class recall and precision on the labelled sample, classes chosen per run, technical
text left alone (documentation addresses, example domains, the shipped Python docs)."""

from __future__ import annotations

import json

import pytest
from slmforge.bench.dev.pii_quality import DOCS, load_sample, score, technical_changes
from slmforge.trainer.data.pii import CLASSES, DEFAULT_CLASSES, iban_ok, luhn_ok, parse_classes, redact

from slmforge.errors import UserError
from tests.test_data_prepare import PARA, _cli


def test_sample_is_large_and_covers_every_class():
    items = load_sample()
    assert len(items) >= 200
    labels = [i["label"] for i in items]
    assert all(labels.count(c) >= 10 for c in CLASSES) and labels.count(None) >= 50
    assert all(i["value"] in i["text"] for i in items if i["label"])


@pytest.mark.parametrize("cls", CLASSES)
def test_recall_and_precision_per_class(cls):
    row = score(load_sample())[cls]
    assert row["recall"] >= 0.95, row["missed"]
    assert row["precision"] >= 0.9, row["false_alarms"]


def test_issue_items_are_caught():
    for text in ("+49 30 1234567", "030-98765432", "07700 900123", "4111 1111 1111 1111", "5500 0055 5555 5559",
                 "DE89 3704 0044 0532 0130 00", "078-05-1120", "221B Baker Street", "Hauptstraße 5"):
        redacted, counts = redact(f"see {text}, thanks")
        assert text not in redacted and sum(counts.values()) == 1, (text, redacted)


def test_checksums_decide_cards_and_ibans():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert redact("card 4111 1111 1111 1112 ok") == ("card 4111 1111 1111 1112 ok", {})
    assert redact("IBAN DE89 3704 0044 0532 0130 01") == ("IBAN DE89 3704 0044 0532 0130 01", {})


HANDBOOK = ("Give the server the address 192.168.1.10 and the gateway 10.0.0.1; the examples below use "
            "192.0.2.15, 198.51.100.7, 203.0.113.254 and 2001:db8::10 as in RFC 5737/3849.")


def test_ip_is_off_by_default_and_documentation_ranges_stay_when_on():
    assert "ip" not in DEFAULT_CLASSES
    assert redact(HANDBOOK) == (HANDBOOK, {})
    redacted, counts = redact(HANDBOOK, {"ip"})
    assert counts == {"IP": 2} and "192.168.1.10" not in redacted and "10.0.0.1;" not in redacted
    assert all(doc in redacted for doc in ("192.0.2.15", "198.51.100.7", "203.0.113.254", "2001:db8::10"))


def test_only_chosen_classes_are_redacted():
    text = "mail bob@acme-corp.io or call +49 30 1234567"
    assert redact(text, {"phone"}) == ("mail bob@acme-corp.io or call <PHONE>", {"PHONE": 1})
    assert redact(text, set()) == (text, {})
    assert parse_classes("default,ip") == DEFAULT_CLASSES | {"ip"}
    assert parse_classes("all") == set(CLASSES) and parse_classes("none") == set()
    with pytest.raises(UserError, match="unknown class 'phones'"):
        parse_classes("email,phones")


def test_shipped_python_docs_are_barely_touched():
    """Precision on technical text: ~0.9 MB of docs; only real e-mail addresses change (3 today)."""
    changes = technical_changes(DOCS, DEFAULT_CLASSES)
    assert set(changes["by_class"]) <= {"EMAIL"} and changes["changes"] <= 5, changes["changed_lines"]
    assert technical_changes(DOCS, CLASSES)["changes"] <= 5


def test_cli_redact_chooses_classes(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(f"{PARA} Mail ops@acme-corp.io, call +49 30 1234567, host 192.168.1.10.\n")
    code, _, err = _cli(capsys, "data", "prepare", str(docs), "--out", str(tmp_path / "out"), "--redact", "phone",
                        "--heldout-fraction", "0", "--json")
    assert code == 0, err
    text = (tmp_path / "out" / "train.jsonl").read_text()
    assert "<PHONE>" in text and "ops@acme-corp.io" in text and "192.168.1.10" in text
    assert json.loads((tmp_path / "out" / "slmforge.json").read_text())["params"]["redact"] == ["phone"]
    code, _, err = _cli(capsys, "data", "prepare", str(docs), "--out", str(tmp_path / "out2"), "--redact", "bogus")
    assert code == 2 and "unknown class 'bogus'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists()
