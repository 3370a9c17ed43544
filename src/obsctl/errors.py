"""The errors every layer of obsctl raises: the bottom of the import graph (it imports nothing of obsctl).

* the exit statuses of the CLI (:data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_USAGE`);
* :class:`ConfigError`: a config file, a request or a command line that cannot
  be used (exit status 2 of the CLI, ``invalid`` in ``obsctl systemd apply
  --json``); raised by the schema (:mod:`obsctl.config`), the credential
  readers, the drivers' option checks and the spec rules (:mod:`obsctl.mountspec`).
"""

from __future__ import annotations

#: Exit status of every ``obsctl`` command (README "Using obsctl", docs/operations.md):
#: 0 done (also a mount stopped by SIGTERM before it was ready); 1 the command could not do
#: its job (the mount failed, a repair failed; nothing is left half-done); 2 bad usage or
#: invalid input (:class:`ConfigError`, an unusable mountpoint): nothing was started or changed.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: ``obsctl mount`` only: the mount failed for a permanent reason (the backend refused the
#: credentials, the bucket does not exist): retrying cannot help, nothing retries it (the unit's
#: ``RestartPreventExitStatus=3``, the health timer leaves it failed; docs/operations.md).
EXIT_PERMANENT = 3


class ConfigError(ValueError):
    """A config file or command line that cannot be used; ``str()`` says why and how to fix it."""
