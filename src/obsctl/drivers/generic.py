"""Any FUSE daemon run in the foreground (``--impl generic -- COMMAND ARGS...``).

obsctl cannot know its flags or its log format, so it runs the command as
given, with obsctl's environment, and observes it with the generic
collectors only (/proc/PID/io, the FUSE connection's ``waiting``, the stat
probe). The daemon must stay in the foreground (bindfs ``-f``, sshfs ``-f``).
"""

from __future__ import annotations

from obsctl.drivers.base import DocRow, Driver


class GenericDriver(Driver):
    """Supervise ``spec.command`` unchanged."""

    name = "generic"
    #: The source is free text, shown in status and as the ``bucket`` label.
    source_form = "any text (a label)"
    takes_command = True
    credentials = None
    doc = DocRow(binary="any FUSE daemon in the foreground", runs="the command after `--`, unchanged",
                 collectors="proc_io, fuse_conn, probe", mount_type="any fuse.*")

    def check_source(self, source):
        """Any text: obsctl only shows it."""

    def bucket_label(self, source):
        """The source as written."""
        return source

    def command(self, spec, options, context, launch):
        """``spec.command`` as given (the generic driver has no options of its own)."""
        return list(spec.command)

    def is_error(self, line):
        return bool(line.strip())
