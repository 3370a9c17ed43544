#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, obsctl.observability contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: fuse_mount
short_description: Mount an S3 bucket with FUSE, run by systemd through obsctl
version_added: "0.1.0"
description:
  - Owns the desired state of one object-storage FUSE mount called O(name).
    It writes the mount spec C(/etc/obsctl/mounts/NAME.toml) (no secret in it),
    stores O(credentials) as a systemd encrypted credential
    C(/etc/obsctl/credentials/NAME.cred) created by C(systemd-creds encrypt)
    from stdin (the clear text never touches the disk), and enables the unit
    C(obsctl-mount@NAME.service). systemd runs the mount through
    C(obsctl mount --config /etc/obsctl/mounts/NAME.toml); this module never
    runs a FUSE driver itself.
  - It reads the live state from C(/proc/self/mountinfo) and the unit state.
    A FUSE mount whose driver died (C(Transport endpoint is not connected)) is
    broken, not mounted; O(state=mounted) repairs it (lazy unmount, restart)
    and reports a change.
  - Idempotent. With the same input a second run reports no change, also when
    O(credentials) are given (the stored credential is decrypted in memory
    and compared).
  - Every file is written atomically (temporary file and rename). When the
    mount does not come up, what this run changed is rolled back and the
    module fails with the last log lines of the unit.
  - The module is thin. It runs C(obsctl systemd apply --json) on the target
    with the request on stdin (secrets never in the command line), so the rules
    that validate a mount are those of the program that runs it (C(obsctl
    mount)), and C(obsctl systemd install) converges a mount the same way.
  - C(obsctl) and the unit template C(obsctl-mount@.service) must be
    installed, see the C(obsctl.observability.obsctl) role. In check mode on a
    host without C(obsctl) yet, the module predicts a change and warns.
author:
  - obsctl.observability contributors (@obsctl)
options:
  name:
    description:
      - Name of the mount. It names the unit C(obsctl-mount@NAME.service), the
        spec C(/etc/obsctl/mounts/NAME.toml) and the credential file.
      - 1 to 64 characters from C(A-Z a-z 0-9 _ . -), starting with a letter or
        a digit.
    type: str
    required: true
  src:
    description:
      - The bucket and optional prefix, V(s3://bucket) or V(s3://bucket/prefix).
      - Required when O(state) is V(mounted), V(present) or V(remounted).
    type: str
  path:
    description:
      - Absolute path of the mountpoint. O(state=mounted) creates the directory
        when it is missing.
      - Required when O(state) is V(mounted), V(present) or V(remounted). For
        V(unmounted) and V(absent) it defaults to the mountpoint of the
        existing spec.
    type: path
    aliases: [mountpoint]
  impl:
    description:
      - The FUSE driver that C(obsctl) runs, one of V(rclone), V(s3fs),
        V(goofys), V(geesefs), V(mountpoint-s3) and V(generic) (the drivers of
        C(obsctl mount --impl); a test keeps this list equal to obsctl's
        registry). An unknown driver is refused with obsctl's own message.
      - V(goofys), V(geesefs) and V(mountpoint-s3) come from release files,
        see the C(obsctl.observability.fuse_driver) role.
    type: str
    default: rclone
  endpoint:
    description:
      - URL of an S3-compatible endpoint, for example V(http://127.0.0.1:9000).
        Leave it out for AWS S3.
    type: str
  region:
    description:
      - Region of the bucket.
    type: str
  profile:
    description:
      - AWS shared-credentials profile the driver uses when O(credentials) is
        not given.
    type: str
  options:
    description:
      - Extra driver options in the form C(obsctl mount -o) takes them, one per
        item, C(key=value) or a bare flag name, without a leading C(-o) or
        C(--). obsctl turns each into the driver's own syntax (rclone
        C(--key=value), s3fs C(-o key=value)) and refuses options that could
        carry a secret or override what obsctl sets up (docs/security.md).
      - Never put a secret here, the driver's command line is visible to every
        user in C(/proc/PID/cmdline). Use O(credentials).
    type: list
    elements: str
    default: []
  cache_mode:
    description:
      - rclone's C(--vfs-cache-mode).
    type: str
    choices: ["off", minimal, writes, full]
  command:
    description:
      - With O(impl=generic), the FUSE daemon's command line (run in the
        foreground by C(obsctl)). Required with O(impl=generic).
    type: list
    elements: str
  credentials:
    description:
      - Access key for the bucket. Stored encrypted with C(systemd-creds) and
        given to the unit with C(LoadCredentialEncrypted=); the driver gets it
        in its environment only.
      - When omitted, a credential stored earlier for this mount is removed and
        the driver uses O(profile) or its environment.
    type: dict
    suboptions:
      access_key_id:
        description: AWS_ACCESS_KEY_ID.
        type: str
        required: true
      secret_access_key:
        description: AWS_SECRET_ACCESS_KEY.
        type: str
        required: true
      session_token:
        description: AWS_SESSION_TOKEN, for temporary credentials.
        type: str
  read_only:
    description:
      - Mount read-only.
    type: bool
    default: false
  allow_other:
    description:
      - Let users other than root use the mount (FUSE C(allow_other)).
    type: bool
    default: false
  ready_timeout:
    description:
      - Seconds C(obsctl) waits for the mount to appear before it gives up
        (C(ready_timeout_seconds) in the spec).
    type: int
    default: 30
  telemetry_config:
    description:
      - Telemetry configuration file for this mount, when it is not the
        default C(/etc/obsctl/telemetry.toml).
    type: path
  health_timer:
    description:
      - The health-check timer C(obsctl-mount@NAME.timer) (installed by the
        C(obsctl.observability.obsctl) role), which remounts a stale mount.
      - V(true) enables it (and starts it with O(state=mounted) or
        O(state=remounted)); V(false) stops and disables it; omitted leaves it
        as it is. O(state=absent) always stops and disables it, and so does
        O(state=unmounted) with V(true) (a mount stopped on purpose is not
        health-checked).
    type: bool
  obsctl_path:
    description:
      - Path of the C(obsctl) program on the target. By default C(obsctl) on
        E(PATH), else C(/opt/obsctl/bin/obsctl) (where the obsctl role
        installs it).
    type: path
  service_manager:
    description:
      - What runs the mount. V(systemd) is the unit C(obsctl-mount@NAME.service).
      - V(none) is for hosts without systemd as PID 1 (containers, WSL). The same
        spec C(/etc/obsctl/mounts/NAME.toml), with the same rules, and
        C(obsctl mount --config) on it started in the background (log in
        C(/var/log/obsctl-mount-NAME.log)). O(credentials) are not stored; they
        reach that process's environment only. So a changed credential applies
        with O(state=remounted). Such a mount does not survive a reboot.
        O(health_timer) is ignored.
    type: str
    choices: [systemd, none]
    default: systemd
  state:
    description:
      - V(mounted) writes the spec and credential, enables the unit and makes
        sure the mount is up and answering. A changed spec or credential
        restarts the unit; a dead mount is repaired.
      - V(present) writes the spec and credential and enables the unit; the
        live mount is not touched (a changed spec applies at the next start).
      - V(unmounted) stops the unit and unmounts, keeping spec, credential and
        enablement.
      - V(absent) stops and disables the unit, unmounts, and removes the spec,
        the credential and the drop-in. The mountpoint directory stays.
      - V(remounted) is V(mounted) plus a restart of the unit every time; it
        always reports a change.
    type: str
    choices: [mounted, unmounted, present, absent, remounted]
    default: mounted
attributes:
  check_mode:
    support: full
    description: Computes the actions, the diff and the result without acting.
  diff_mode:
    support: full
    description: Shows the spec change, the credential lines with values redacted, and the unit state.
  platform:
    support: full
    platforms: posix
    description: Linux with systemd, FUSE and C(systemd-creds) (systemd 250 or later).
notes:
  - Needs root on the target (C(become=true)).
  - The credential is encrypted with the host's key (and the TPM2 when there is one); the file cannot be decrypted on another host.
seealso:
  - module: obsctl.observability.fuse_mount_info
  - module: ansible.posix.mount
requirements:
  - systemd with C(systemd-creds) (systemd 250 or later)
  - the C(obsctl) program and the C(obsctl-mount@.service) unit template (role C(obsctl.observability.obsctl))
"""

EXAMPLES = r"""
- name: Mount a bucket from a local S3-compatible server
  obsctl.observability.fuse_mount:
    name: data
    src: s3://data/exports
    path: /mnt/data
    endpoint: http://127.0.0.1:9000
    region: us-east-1
    credentials:
      access_key_id: "{{ vault_data_access_key_id }}"
      secret_access_key: "{{ vault_data_secret_access_key }}"
    state: mounted

- name: Read-only s3fs mount shared with other users
  obsctl.observability.fuse_mount:
    name: archive
    src: s3://archive
    path: /srv/archive
    impl: s3fs
    read_only: true
    allow_other: true
    profile: archive-reader
    options:
      - multireq_max=8

- name: Configure at boot, do not touch the running mount now
  obsctl.observability.fuse_mount:
    name: data
    src: s3://data/exports
    path: /mnt/data
    state: present

- name: Unmount, keep the configuration
  obsctl.observability.fuse_mount:
    name: data
    state: unmounted

- name: Remove the mount, its unit, spec and credential
  obsctl.observability.fuse_mount:
    name: data
    state: absent
"""

RETURN = r"""
name:
  description: Name of the mount.
  returned: always
  type: str
  sample: data
state:
  description: The requested state.
  returned: always
  type: str
  sample: mounted
unit:
  description: The systemd unit that runs the mount; null with O(service_manager=none).
  returned: always
  type: str
  sample: obsctl-mount@data.service
log_path:
  description: The log of the background C(obsctl mount).
  returned: when O(service_manager=none)
  type: str
  sample: /var/log/obsctl-mount-data.log
config_path:
  description: Path of the mount spec.
  returned: always
  type: str
  sample: /etc/obsctl/mounts/data.toml
credential_path:
  description: Path of the encrypted credential, null when the mount has none.
  returned: always
  type: str
  sample: /etc/obsctl/credentials/data.cred
actions:
  description: What the module did, or in check mode would do, in order.
  returned: always
  type: list
  elements: str
  sample:
    - write /etc/obsctl/mounts/data.toml
    - encrypt credential /etc/obsctl/credentials/data.cred
    - write /etc/systemd/system/obsctl-mount@data.service.d/credentials.conf
    - systemctl daemon-reload
    - enable obsctl-mount@data.service
    - start obsctl-mount@data.service
mount:
  description: The mount at the mountpoint after the run (in check mode, before it).
  returned: always
  type: dict
  contains:
    mountpoint:
      description: The mountpoint.
      type: str
      sample: /mnt/data
    source:
      description: Source field of the mount table entry, null when nothing is mounted.
      type: str
      sample: "obsctl-data:data/exports"
    fstype:
      description: File system type, null when nothing is mounted.
      type: str
      sample: fuse.rclone
    health:
      description: V(ok) (mounted and answering), V(stale) (mounted but the driver is gone or does not answer), V(missing) (not mounted).
      type: str
      sample: ok
unit_state:
  description: State of the unit after the run (in check mode, before it).
  returned: always
  type: dict
  contains:
    active_state:
      description: systemd ActiveState.
      type: str
      sample: active
    sub_state:
      description: systemd SubState.
      type: str
      sample: running
    enabled:
      description: Whether the unit starts at boot.
      type: bool
      sample: true
journal:
  description: Last log lines of the unit when the mount failed to come up.
  returned: failure
  type: list
  elements: str
rolled_back:
  description: Whether the changes of this run were undone after a failure.
  returned: failure
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.obsctl.observability.plugins.module_utils._obsctl import (
    find_obsctl,
    not_installed_message,
    run_json,
)

#: Options that are not part of obsctl's request.
_LOCAL_OPTIONS = ("obsctl_path",)


def argument_spec():
    return dict(
        name=dict(type="str", required=True),
        src=dict(type="str"),
        path=dict(type="path", aliases=["mountpoint"]),
        impl=dict(type="str", default="rclone"),
        endpoint=dict(type="str"),
        region=dict(type="str"),
        profile=dict(type="str"),
        options=dict(type="list", elements="str", default=[]),
        cache_mode=dict(type="str", choices=["off", "minimal", "writes", "full"]),
        command=dict(type="list", elements="str"),
        credentials=dict(
            type="dict",
            no_log=True,
            options=dict(
                access_key_id=dict(type="str", required=True, no_log=True),
                secret_access_key=dict(type="str", required=True, no_log=True),
                session_token=dict(type="str", no_log=True),
            ),
        ),
        read_only=dict(type="bool", default=False),
        allow_other=dict(type="bool", default=False),
        ready_timeout=dict(type="int", default=30),
        telemetry_config=dict(type="path"),
        health_timer=dict(type="bool"),
        service_manager=dict(type="str", choices=["systemd", "none"], default="systemd"),
        obsctl_path=dict(type="path"),
        state=dict(type="str", choices=["mounted", "unmounted", "present", "absent", "remounted"], default="mounted"),
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[
            ("state", "mounted", ("src", "path")),
            ("state", "present", ("src", "path")),
            ("state", "remounted", ("src", "path")),
        ],
        supports_check_mode=True,
    )
    obsctl = find_obsctl(module)
    if obsctl is None:
        if not module.check_mode:
            module.fail_json(msg=not_installed_message(module))
        # A fresh host in a check-mode run before the obsctl role installed it:
        # predict a change instead of failing (the rules are obsctl's: not checked here).
        module.warn("%s; check mode predicts a change without validating the mount" % not_installed_message(module))
        module.exit_json(changed=True, name=module.params["name"], state=module.params["state"],
                         unit="obsctl-mount@%s.service" % module.params["name"], actions=[])
    request = dict((key, value) for key, value in module.params.items()
                   if key not in _LOCAL_OPTIONS and value is not None)
    argv = [obsctl, "systemd", "apply", "--json"]
    if module.check_mode:
        argv.append("--check")
    if module._diff:
        argv.append("--diff")
    rc, result = run_json(module, argv, request)
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    if rc != 0 or result.get("failed"):
        result.pop("failed", None)
        result.pop("invalid", None)
        msg = result.pop("msg", None) or "obsctl systemd apply failed (rc=%d)" % rc
        module.fail_json(msg=msg, rc=rc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
