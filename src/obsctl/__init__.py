"""obsctl: a supervisor and telemetry side-car for FUSE object-storage mounts."""

__version__ = "0.1.0"
