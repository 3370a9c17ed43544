#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, obsctl.observability contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: fuse_mount_info
short_description: List every FUSE mount on the host with its driver, unit and health
version_added: "0.1.0"
description:
  - Reads the mount table (C(/proc/self/mountinfo)) and reports every FUSE
    mount, whoever made it (obsctl, fstab, a user running C(rclone mount) or
    C(bindfs)), with the process that serves it, the systemd unit that runs
    that process, its health and the FUSE requests waiting on it.
  - Mounts configured in C(/etc/obsctl/mounts/*.toml) that are not mounted are
    listed too, with O(ignore_missing=false) (the default), with health
    V(missing).
  - Changes nothing. The list is C(obsctl status --all --json) on the target
    (the view of the same engine the C(obsctl.observability.fuse_mount) module
    drives), so C(obsctl) must be installed (role C(obsctl.observability.obsctl)).
author:
  - obsctl.observability contributors (@obsctl)
options:
  mountinfo_path:
    description:
      - The mount table to read.
    type: path
    default: /proc/self/mountinfo
  stat_timeout:
    description:
      - Seconds to wait for a mount to answer the health probe (a C(statvfs) of
        the mountpoint). A mount that does not answer in time is V(hung).
    type: float
    default: 5.0
  obsctl_path:
    description:
      - Path of the C(obsctl) program on the target. By default C(obsctl) on
        E(PATH), else C(/opt/obsctl/bin/obsctl).
    type: path
  ignore_missing:
    description:
      - Leave out the mounts configured in C(/etc/obsctl/mounts) that are not
        mounted.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: The module changes nothing, it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Linux (C(/proc/self/mountinfo)).
notes:
  - The health probe and the driver lookup (C(/proc/PID/fd)) need root to see
    the mounts of other users.
  - RV(mounts[].waiting) needs fusectl mounted on C(/sys/fs/fuse/connections)
    (C(mount -t fusectl none /sys/fs/fuse/connections)); otherwise it is null.
seealso:
  - module: obsctl.observability.fuse_mount
"""

EXAMPLES = r"""
- name: Gather the FUSE mounts
  obsctl.observability.fuse_mount_info:
  register: fuse

- name: Fail when a mount is broken
  ansible.builtin.assert:
    that: fuse.mounts | selectattr('health', 'ne', 'ok') | list | length == 0
    fail_msg: "{{ fuse.mounts | selectattr('health', 'ne', 'ok') | map(attribute='mountpoint') | list }} not healthy"

- name: Show who serves /mnt/data
  ansible.builtin.debug:
    msg: "{{ fuse.mounts | selectattr('mountpoint', 'eq', '/mnt/data') | first }}"
"""

RETURN = r"""
mounts:
  description: One entry per FUSE mountpoint (the visible mount when several are stacked), then the configured ones that are missing.
  returned: always
  type: list
  elements: dict
  contains:
    mountpoint:
      description: The mountpoint.
      type: str
      sample: /mnt/data
    source:
      description: Source field of the mount table (for a missing mount, the C(source) of its spec).
      type: str
      sample: "s3remote:data"
    fstype:
      description: File system type, null for a missing mount.
      type: str
      sample: fuse.rclone
    driver:
      description: FUSE subtype (V(rclone), V(s3fs), V(bindfs) ...), or the spec's C(impl) for a missing mount.
      type: str
      sample: rclone
    connection:
      description: FUSE connection number (directory under C(/sys/fs/fuse/connections)), null for a missing mount.
      type: int
      sample: 52
    read_only:
      description: Whether the mount is read-only.
      type: bool
      sample: false
    pid:
      description: PID of the driver process serving the mount, null when it is gone (stale) or not found.
      type: int
      sample: 4242
    unit:
      description: systemd unit (service or scope) of the driver, or C(obsctl-mount@NAME.service) for an obsctl mount; null when unknown.
      type: str
      sample: obsctl-mount@data.service
    name:
      description: The obsctl mount name when C(/etc/obsctl/mounts/NAME.toml) describes this mountpoint, else null.
      type: str
      sample: data
    health:
      description:
        - V(ok) (answers), V(stale) (driver gone, C(Transport endpoint is not connected)),
          V(hung) (the driver runs but did not answer within O(stat_timeout)), V(missing) (configured, not mounted).
        - The same words as C(obsctl status --json) and C(obsctl systemd check) (the one probe of obsctl).
      type: str
      sample: ok
    waiting:
      description: FUSE requests waiting for the driver, null when fusectl is not mounted or the mount is missing.
      type: int
      sample: 0
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.obsctl.observability.plugins.module_utils._obsctl import (
    find_obsctl,
    not_installed_message,
    run_json,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mountinfo_path=dict(type="path", default="/proc/self/mountinfo"),
            stat_timeout=dict(type="float", default=5.0),
            ignore_missing=dict(type="bool", default=False),
            obsctl_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    obsctl = find_obsctl(module)
    if obsctl is None:
        module.fail_json(msg=not_installed_message(module))
    if module.params["stat_timeout"] <= 0:
        module.fail_json(msg="stat_timeout must be a number of seconds greater than 0")
    argv = [obsctl, "status", "--all", "--json", "--stat-timeout", str(module.params["stat_timeout"]),
            "--mountinfo", module.params["mountinfo_path"]]
    rc, mounts = run_json(module, argv)
    if rc != 0 or not isinstance(mounts, list):
        module.fail_json(msg="obsctl status --all failed (rc=%d)" % rc, rc=rc)
    if module.params["ignore_missing"]:
        mounts = [entry for entry in mounts if entry["health"] != "missing"]
    module.exit_json(changed=False, mounts=mounts)


if __name__ == "__main__":
    main()
