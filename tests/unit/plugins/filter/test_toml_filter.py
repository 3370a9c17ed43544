"""The filter plugins obsctl.observability.to_toml / telemetry_toml /
merge_telemetry_toml: the same writer as obsctl.tomlio, errors as
AnsibleFilterError naming the filter, a clear message without tomlkit."""

import os
import tomllib

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.obsctl.observability.plugins.filter import toml as toml_filter
from ansible_collections.obsctl.observability.plugins.module_utils import _toml

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "node", "config.toml")
FILTERS = toml_filter.FilterModule().filters()


def test_filters_are_registered():
    assert set(FILTERS) == {"to_toml", "telemetry_toml", "merge_telemetry_toml"}


def test_telemetry_toml_is_the_writer():
    settings = {"mode": "local", "service_name": "node", "attributes": {"a": "b"}}
    assert FILTERS["telemetry_toml"](settings) == _toml.render_telemetry(settings)


def test_merge_result_shape():
    with open(FIXTURE, encoding="utf-8") as handle:
        text = handle.read()
    result = FILTERS["merge_telemetry_toml"](text, {"mode": "local"}, origin="/etc/node/config.toml")
    assert result["changed"] is True
    assert result["removed_legacy_keys"] == ["telemetry.enabled", "telemetry.otlp_endpoint",
                                             "telemetry.service_name"]
    assert tomllib.loads(result["content"])["telemetry"]["mode"] == "local"
    again = FILTERS["merge_telemetry_toml"](result["content"], {"mode": "local"})
    assert again == {"content": result["content"], "removed_legacy_keys": [], "changed": False,
                     "profile": "rollout-plan"}


def test_subclassed_values_are_plain():
    class TaggedStr(str):
        pass

    class TaggedInt(int):
        pass

    text = FILTERS["telemetry_toml"]({"mode": TaggedStr("remote"), "otlp_endpoint": TaggedStr("http://h:4317"),
                                      "export_interval_seconds": TaggedInt(10)})
    assert tomllib.loads(text)["telemetry"]["metrics"]["export_interval_seconds"] == 10


def test_errors_name_the_filter_and_the_key():
    with pytest.raises(AnsibleFilterError, match=r"obsctl.observability.telemetry_toml: telemetry.traces_enabled"):
        FILTERS["telemetry_toml"]({"mode": "remote", "traces_enabled": "maybe"})
    with pytest.raises(AnsibleFilterError, match=r"merge_telemetry_toml: /x.toml is not valid TOML"):
        FILTERS["merge_telemetry_toml"]("[a\n", {"mode": "none"}, origin="/x.toml")
    with pytest.raises(AnsibleFilterError, match="to_toml"):
        FILTERS["to_toml"]({"a": None})


def test_without_tomlkit_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_toml, "HAS_TOMLKIT", False)
    monkeypatch.setattr(_toml, "TOMLKIT_IMPORT_ERROR", ImportError("No module named 'tomlkit'"))
    with pytest.raises(AnsibleFilterError, match=r"tomlkit is missing.*pip install 'tomlkit"):
        FILTERS["telemetry_toml"]({"mode": "none"})
