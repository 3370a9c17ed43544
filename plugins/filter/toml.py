# -*- coding: utf-8 -*-
# Copyright: (c) 2026, obsctl.observability contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters that write TOML with the collection's one TOML writer (tomlkit).

The implementation is plugins/module_utils/_toml.py, the same file the
``obsctl`` package ships as ``obsctl.tomlio``; these filters only translate
its errors into AnsibleFilterError. They run on the controller, which needs
the Python library tomlkit (see the README, "Requirements").
Documentation: the YAML files next to this one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.obsctl.observability.plugins.module_utils import _toml


def _call(name, function, *args, **kwargs):
    try:
        _toml.require_tomlkit()
        return function(*args, **kwargs)
    except _toml.TomlWriteError as exc:
        raise AnsibleFilterError("obsctl.observability.%s: %s" % (name, to_text(exc)))


def to_toml(data):
    """Any mapping as a TOML document (keys in the given order)."""
    return _call("to_toml", _toml.to_toml, _plain(data))


def telemetry_toml(telemetry):
    """The text of /etc/obsctl/telemetry.toml from the flat settings dict."""
    return _call("telemetry_toml", _toml.render_telemetry, _plain(telemetry))


def merge_telemetry_toml(text, telemetry, origin="the application's TOML", profile=_toml.DEFAULT_PROFILE,
                         extra=None):
    """``{content, removed_legacy_keys, changed, profile}``: what the application profile allows, written into ``text``."""
    merged, removed = _call("merge_telemetry_toml", _toml.merge_telemetry, to_text(text), _plain(telemetry),
                            origin=to_text(origin), profile=to_text(profile), extra=_plain(extra or {}))
    return {"content": merged, "removed_legacy_keys": removed, "changed": merged != to_text(text),
            "profile": to_text(profile)}


def _plain(value):
    """Ansible's lazy containers and tagged values as plain dict / list / str / int / float."""
    if isinstance(value, dict):
        return dict((to_text(key), _plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return to_text(value)
    if isinstance(value, bool):
        return value
    for plain in (str, int, float):
        if isinstance(value, plain) and value.__class__ is not plain:
            return plain(value)
    return value


class FilterModule(object):
    """obsctl.observability TOML filters."""

    def filters(self):
        return {
            "to_toml": to_toml,
            "telemetry_toml": telemetry_toml,
            "merge_telemetry_toml": merge_telemetry_toml,
        }
