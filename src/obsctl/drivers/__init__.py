"""FUSE drivers: the registry, one line per driver (the contract is :mod:`obsctl.drivers.base`).

One module per driver. A driver turns a validated :class:`~obsctl.config.MountSpec`,
:class:`~obsctl.credentials.Credentials` and a :class:`PlanContext` into a
:class:`LaunchPlan` (argv and environment; the secret only ever in the
environment), names the mount type it creates, picks the lines of its log
worth forwarding and the lines that explain a failure, and builds its
collectors once telemetry is up.

This package must stay cheap to import: the supervisor spawns the driver
before the OpenTelemetry SDK is imported.
"""

from __future__ import annotations

from obsctl.drivers.base import (  # noqa: F401  (the contract, re-exported for the package's users)
    CMDLINE,
    CREDENTIAL_WORDS,
    CREDS,
    DISTRO_DRIVERS,
    Driver,
    LaunchPlan,
    LongFlagDriver,
    OptionRule,
    PlanContext,
    RELEASE_DRIVERS,
    SPEC,
    long_flag,
    normalise_option,
    refuse_short_flag,
    split_option,
)
from obsctl.redact import redact  # noqa: F401  (re-exported: tests and drivers redact with it)
from obsctl.drivers.generic import GenericDriver
from obsctl.drivers.geesefs import GeesefsDriver
from obsctl.drivers.goofys import GoofysDriver
from obsctl.drivers.juicefs import JuicefsDriver
from obsctl.drivers.mountpoint_s3 import MountpointS3Driver
from obsctl.drivers.rclone import RcloneDriver
from obsctl.drivers.s3fs import S3fsDriver


def get_driver(impl: str) -> Driver:
    """A new driver object for ``impl`` (a key of :data:`DRIVERS`).

    Raises:
        KeyError: ``impl`` is not a driver obsctl knows.
    """
    return DRIVERS[impl]()


# The registry: one line per driver. The spec rules (obsctl.mountspec), the CLI's
# --impl choices and docs/drivers.md use it (tests/unit/test_driver_registry.py
# checks that they agree). None of the driver modules imports the OpenTelemetry SDK.
#: Driver name (``impl`` in a mount spec, ``--impl`` on the command line) -> class.
DRIVERS: dict[str, type[Driver]] = {
    "rclone": RcloneDriver,
    "s3fs": S3fsDriver,
    "goofys": GoofysDriver,
    "geesefs": GeesefsDriver,
    "mountpoint-s3": MountpointS3Driver,
    "juicefs": JuicefsDriver,
    "generic": GenericDriver,
}
