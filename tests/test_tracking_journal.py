import json

from vice.tracking_journal import Journal, compare_history


def test_append_then_drop_by_id_keeps_order_and_ledger(tmp_path):
    j = Journal(tmp_path)
    j.append({"op": "params", "items": {"a": "1"}})
    j.append({"op": "metrics", "items": [["loss", 2.5, 1000, 1], ["lr", 0.1, 1000, 1]]})
    j.append({"op": "metrics", "items": [["loss", 2.0, 2000, 2]]})
    ops = j.pending()
    assert [op["op"] for op in ops] == ["params", "metrics", "metrics"]
    assert len({op["id"] for op in ops}) == 3
    assert j.pending_metric_values() == 3
    j.drop({ops[0]["id"], ops[2]["id"]})
    assert [op["id"] for op in j.pending()] == [ops[1]["id"]]
    # the ledger keeps every value, sent or not
    assert [(r["key"], r["step"], r["value"]) for r in j.ledger()] == [
        ("loss", 1, 2.5), ("lr", 1, 0.1), ("loss", 2, 2.0),
    ]  # fmt: skip


def test_torn_last_line_is_ignored(tmp_path):
    j = Journal(tmp_path)
    j.append({"op": "tags", "items": {"x": "y"}})
    with open(j.pending_path, "a") as f:
        f.write('{"op": "metr')  # a crash in the middle of a write
    assert [op["op"] for op in j.pending()] == ["tags"]


def test_compare_history_finds_missing_duplicate_and_different_values():
    ledger = [
        {"key": "loss", "step": 1, "value": 2.0},
        {"key": "loss", "step": 2, "value": 1.5},
        {"key": "loss", "step": 2, "value": 1.5},  # logged again after a resume
        {"key": "loss", "step": 3, "value": 1.0},
        {"key": "lr", "step": 1, "value": 0.1},
    ]
    good = {"loss": [(1, 2.0), (2, 1.5), (3, 1.0)], "lr": [(1, 0.1)]}
    assert compare_history(ledger, good) == []
    bad = {"loss": [(1, 2.0), (2, 1.5), (2, 1.5), (3, 0.9)]}
    assert compare_history(ledger, bad) == [
        "duplicate: loss at step 2 has 2 values [1.5, 1.5]",
        "different: loss at step 3 is 0.9, logged [1.0]",
        "missing: lr at step 1",
    ]


def test_nan_values_round_trip(tmp_path):
    j = Journal(tmp_path)
    j.append({"op": "metrics", "items": [["loss", float("nan"), 1, 1]]})
    assert json.loads(j.ledger_path.read_text().splitlines()[0])["value"] != 0
    assert compare_history(j.ledger(), {"loss": [(1, float("nan"))]}) == []
