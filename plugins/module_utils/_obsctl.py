# -*- coding: utf-8 -*-
# Copyright: (c) 2026, obsctl.observability contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Private code of the fuse_mount and fuse_mount_info modules: drive ``obsctl`` on the host.

The modules are thin, as community.docker's docker_compose_v2 is over the
compose CLI: every rule (spec validation, files, credentials, systemd,
rollback, health) is obsctl's (``obsctl systemd apply --json`` and
``obsctl status --all --json``, the obsctl package's ``obsctl.engine`` and
``obsctl.inventory``). This file finds the program, sends the request as
JSON on stdin (secrets never in argv) and reads one JSON object back.

Runs on Ansible targets: Python 3.8 compatible, standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os

#: Where the obsctl role installs the program (``obsctl_venv`` + ``/bin``).
DEFAULT_DIRS = ["/opt/obsctl/bin"]

NOT_INSTALLED = (
    "obsctl is not installed on this host (not on PATH, not in %s): install it with the role "
    "obsctl.observability.obsctl, or set obsctl_path"
)


def find_obsctl(module):
    """Path of the obsctl executable: the ``obsctl_path`` option, else PATH, else /opt/obsctl/bin.

    Returns None when there is none (the caller decides: check mode predicts, a run fails).
    """
    path = module.params.get("obsctl_path")
    if path:
        return path if os.access(path, os.X_OK) else None
    return module.get_bin_path("obsctl", opt_dirs=DEFAULT_DIRS)


def not_installed_message(module):
    """The error (or check-mode warning) for a host without obsctl."""
    if module.params.get("obsctl_path"):
        return "obsctl_path %s is not an executable file" % module.params["obsctl_path"]
    return NOT_INSTALLED % ", ".join(DEFAULT_DIRS)


def run_json(module, argv, request=None):
    """Run ``argv`` (obsctl first) with ``request`` as JSON on stdin; returns ``(rc, result)``.

    ``result`` is the one JSON object obsctl printed. When stdout is not JSON
    (an obsctl too old for the call, a crash) the module fails with obsctl's stderr.
    """
    data = json.dumps(request) if request is not None else None
    rc, out, err = module.run_command(argv, data=data, binary_data=False, environ_update={"OBSCTL_LOG_LEVEL": "ERROR"})
    try:
        result = json.loads(out)
    except ValueError:
        result = None
    if not isinstance(result, (dict, list)):
        module.fail_json(
            msg="%s did not answer with JSON (rc=%d); is it obsctl 0.1 or later? %s" % (
                " ".join(argv[:3]), rc, (err or out).strip()[-2000:]),
            rc=rc)
    return rc, result
