"""The errors QEMU must give in the failure scenarios, with where they come from.

One entry per error: the QMP error class (None for an error that is not a
QMP reply: a source's ``error-desc`` or a line on the destination's stderr),
a pattern on the text, the QEMU file and function that raises it, and the
QEMU versions whose real text the pattern was checked against
(tests/test_failpaths.py keeps those texts).  A pattern names what fired
rather than copying the sentence, because wording drifts between releases;
where 7.2 and 10.0 differ the pattern accepts both and ``source`` says which
function gives which.

Versions: 7.2 = Debian 7.2+dfsg (7.2.22), 10.0 = bookworm-backports 10.0.2.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: The versions every entry below was checked against on real binaries.
CHECKED_ON = ("7.2", "10.0")


@dataclass(frozen=True)
class Expect:
    """An error QEMU must give: QMP error class (None: not a QMP error, e.g. an
    ``error-desc`` or a stderr line) and a regex on the text."""

    error_class: str | None
    pattern: str
    #: QEMU file and function that raise it (per version where they differ).
    source: str
    #: QEMU versions whose text was seen to match (``major.minor``).
    versions: tuple[str, ...] = CHECKED_ON

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


ERRORS: dict[str, Expect] = {
    # util/qemu-sockets.c inet_connect_saddr (7.2, 10.0): "Failed to connect to
    # '<host>:<port>'" + strerror, reported through migrate_fd_error into the
    # source's error-desc.
    "tcp-refused": Expect(None, r"(?i)connect.*127\.0\.0\.1.*Connection refused",
                          "util/qemu-sockets.c inet_connect_saddr"),
    # util/qemu-sockets.c unix_connect_saddr (7.2, 10.0): "Failed to connect to
    # '<path>'" + strerror(ENOENT).
    "unix-missing": Expect(None, r"(?i)connect.*No such file or directory",
                           "util/qemu-sockets.c unix_connect_saddr"),
    # migration/savevm.c vmstate_uuid_post_load (7.2, 10.0): error_report of
    # "UUID received is <src> and local is <dst>" on the destination's stderr.
    "uuid-mismatch": Expect(None, r"UUID received is (?P<src>[0-9a-f-]{36}) and local is "
                                  r"(?P<dst>[0-9a-f-]{36})",
                            "migration/savevm.c vmstate_uuid_post_load"),
    # migration/savevm.c vmstate_uuid_post_load (7.2, 10.0): only a warning
    # when the destination has no -uuid; the load goes on.
    "uuid-unset-warning": Expect(None, r"UUID is received [0-9a-f-]{36}, but local uuid "
                                       r"isn't set",
                                 "migration/savevm.c vmstate_uuid_post_load"),
    # softmmu/physmem.c (7.2) / system/physmem.c (10.0) qemu_ram_resize, called
    # from migration/ram.c ram_load_precopy for RAM_SAVE_FLAG_MEM_SIZE: a
    # non-resizable block of another size is "Size mismatch: <id>: <in> != <local>".
    "ram-size": Expect(None, r"Size mismatch: \S*ram0\S*: 0x0*8000000 != 0x0*10000000",
                       "physmem.c qemu_ram_resize via migration/ram.c ram_load_precopy"),
    # migration/savevm.c configuration_post_load (7.2, 10.0).
    "machine-type": Expect(None, r"Machine type received is '(?P<src>[^']+)' and local is "
                                 r"'(?P<dst>[^']+)'",
                           "migration/savevm.c configuration_post_load"),
    # 7.2: migration/migration.c qmp_migrate_set_capabilities, QERR_MIGRATION_ACTIVE;
    # 10.0: migration/options.c qmp_migrate_set_capabilities (same text).
    "caps-while-active": Expect("GenericError", r"(?i)migration process in progress",
                                "migration.c (7.2) / options.c (10.0) "
                                "qmp_migrate_set_capabilities"),
    # migration/migration.c migrate_prepare (7.2, 10.0): QERR_MIGRATION_ACTIVE.
    "migrate-while-active": Expect("GenericError", r"(?i)migration process in progress",
                                   "migration/migration.c migrate_prepare"),
    # migration/migration.c migrate_prepare (7.2, 10.0): runstate INMIGRATE.
    "migrate-from-inmigrate": Expect("GenericError",
                                     r"(?i)waiting for an incoming migration",
                                     "migration/migration.c migrate_prepare"),
    # migration/migration.c migrate_prepare (7.2, 10.0): runstate POSTMIGRATE.
    "migrate-from-postmigrate": Expect("GenericError",
                                       r"(?i)paused due to previous migration",
                                       "migration/migration.c migrate_prepare"),
    # migration/migration.c qmp_migrate_start_postcopy (7.2, 10.0): the
    # capability test comes before the "not started" test.
    "postcopy-disabled": Expect("GenericError", r"(?i)enable postcopy with "
                                                r"migrate.set.capability",
                                "migration/migration.c qmp_migrate_start_postcopy"),
    # migration/migration.c qmp_migrate_incoming (7.2, 10.0): a static 'once'.
    "incoming-twice": Expect("GenericError", r"(?i)incoming migration has already been "
                                             r"started",
                             "migration/migration.c qmp_migrate_incoming"),
    # 7.2: migration/migration.c qmp_migrate, QERR_INVALID_PARAMETER_VALUE
    # ("Parameter 'uri' expects a valid migration protocol"); 10.0:
    # migration/migration.c migrate_uri_parse ("unknown migration protocol: <uri>").
    "migrate-bad-scheme": Expect("GenericError", r"(?i)(uri.*expects a valid migration "
                                                 r"protocol|unknown migration protocol)",
                                 "migration/migration.c qmp_migrate (7.2) / "
                                 "migrate_uri_parse (10.0)"),
    # migration/migration.c qemu_start_incoming_migration (7.2, 10.0).
    "incoming-bad-scheme": Expect("GenericError", r"(?i)unknown migration protocol",
                                  "migration/migration.c qemu_start_incoming_migration"),
}
