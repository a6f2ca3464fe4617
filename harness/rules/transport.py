"""Rules that tie capabilities to the migration transport.

``migrate-set-capabilities`` cannot know the URI; these checks run when
``migrate`` (source) is given one, so they are modelled apart from the
capability and parameter rules.  A refusal ends the migration before any
data is sent.

Sources:

* 8.0 and later: migration/migration.c, ``migration_channels_and_transport_compatible``
  (``migration_channels_and_uri_compatible`` before 8.2): multifd and
  postcopy-preempt (``migration_needs_multiple_sockets``) need a transport with
  several channels -- a socket, or from 9.0 ``file:`` with mapped-ram
  (``transport_supports_multi_channels``); mapped-ram
  (``migration_needs_seekable_channel``) needs a seekable transport, i.e. ``file:``
  (``transport_supports_seeking``).
* 7.2: migration/multifd.c, ``multifd_save_setup``: multifd only over a socket
  (``migrate_multi_channels_is_allowed``, set for tcp/unix/vsock URIs in
  ``qmp_migrate``); postcopy-preempt is not checked against the transport.
"""
from __future__ import annotations

from collections.abc import Mapping

from harness.rules.model import Version

#: Transports that open several channels (tcp:, unix:, vsock:).  ``fd:`` is a
#: socket too, but one the caller gave: migration/migration.c,
#: transport_supports_multi_channels lists inet, unix and vsock only (7.2:
#: qmp_migrate allows multiple channels for tcp:, unix: and vsock: URIs).
SOCKETS = frozenset({"unix", "tcp", "vsock"})


def transport_refusal(version: Version, caps: Mapping[str, bool], transport: str
                      ) -> tuple[str, str] | None:
    """``(rule id, QEMU's message)`` when the source refuses ``migrate`` on this
    transport with these capabilities, else None."""
    on = {k for k, v in caps.items() if v}
    if version >= (8, 0):
        if "mapped-ram" in on and transport != "file":
            return ("migrate.transport.needs-seekable",
                    "Migration requires seekable transport (e.g. file)")
        multi = transport in SOCKETS or (transport == "file" and "mapped-ram" in on)
        if on & {"multifd", "postcopy-preempt"} and not multi:
            return ("migrate.transport.needs-multi-channel",
                    "Migration requires multi-channel URIs (e.g. tcp)")
        return None
    if "multifd" in on and transport not in SOCKETS:
        return ("migrate.transport.multifd-protocol",
                "multifd is not supported by current protocol")
    return None
