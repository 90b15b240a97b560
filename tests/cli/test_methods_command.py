"""``peftlab methods``: the registry as JSON and as the taxonomy table, and one method's options."""

from __future__ import annotations

import json

import peftlab
from peftlab.cli import main

FAMILIES = {"baseline", "additive", "partial", "reparameterized", "hybrid", "unified"}


def test_json_lists_every_registered_method_once_with_its_family(capsys):
    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    names = [item["name"] for item in listed]
    assert sorted(names) == sorted(peftlab.list_methods()) and len(set(names)) == len(names)
    families = {item["name"]: item["family"] for item in listed}
    assert families == {name: peftlab.get_method(name).family for name in names}
    assert set(families.values()) <= FAMILIES
    assert (families["mam"], families["unipelt"], families["propetl"]) == ("hybrid", "hybrid", "unified")
    assert (families["lora"], families["prefix_tuning"]) == ("reparameterized", "additive")


def test_table_has_one_row_per_method(capsys):
    assert main(["methods"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]  # after the header and its rule
    assert sorted(row.split("`")[1] for row in rows) == sorted(peftlab.list_methods())
    assert "| hybrid | `unipelt` |" in "\n".join(rows)


def test_options_print_each_field_with_its_help(capsys):
    assert main(["methods", "--options", "unipelt"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unipelt (hybrid): Mao et al. 2022")
    for name, text in peftlab.get_method("unipelt").config_class.field_help().items():
        assert f"  {name}: {text}" in out
    assert "gate_pooling: 'token'" in out
