"""Migration capabilities per QEMU version, and the rules QEMU checks on them.

Facts were read from QEMU's source at these points (not copied: predicates and
messages here are our own):

* 6.0.0 (commit 609d759652 "Update version for v6.0.0 release", read in the
  history of OpenE2K/qemu-e2k, whose e2k-softmmu branch, QEMU 6.0.91, has the
  same functions unchanged): ``migration/migration.c``: ``migrate_caps_check``,
  ``qmp_migrate_set_capabilities``; ``qapi/migration.json``: the capability enum;
* 7.2.0 (+ Debian's 7.2.x stable patches): ``migration/migration.c``:
  ``migrate_caps_check``, ``qmp_migrate_set_capabilities``;
* 8.2 (an 8.2-based tree, vendor additions ignored) and 9.0 (upstream):
  ``migration/options.c``: same function names;
* 10.0.2: ``migration/options.c``.

Versions in between take the change points below; those marked "(unverified
point)" sit between two verified versions and are our best reading of where
the change landed.  Rules are listed in QEMU's check order; a version keeps the
rules whose range contains it, and the first one that fires decides the message.

The rules are the contract: where a version is known to check less or more
than its own documentation and QEMU's current tree intend, the rule states the
intent and :mod:`harness.rules.deviations` records the defect.
"""
from __future__ import annotations

from harness.rules.model import (
    CAPS_COMMAND,
    CapSpec,
    Ctx,
    Rule,
    SourceRef,
)

MIG_C = "migration/migration.c"
OPT_C = "migration/options.c"

#: Where migrate_caps_check lives, per version range.
CAPS_CHECK = (
    SourceRef(MIG_C, "migrate_caps_check", (0, 0), (8, 1)),
    SourceRef(OPT_C, "migrate_caps_check", (8, 1), None),
)
SET_CAPS = (
    SourceRef(MIG_C, "qmp_migrate_set_capabilities", (0, 0), (8, 1)),
    SourceRef(OPT_C, "qmp_migrate_set_capabilities", (8, 1), None),
)

# -- which capabilities exist -------------------------------------------------
# qapi/migration.json, enum MigrationCapability.
CAPS: tuple[CapSpec, ...] = (
    CapSpec("xbzrle"),
    CapSpec("rdma-pin-all"),
    CapSpec("auto-converge"),
    CapSpec("zero-blocks"),  # deprecated in 9.2, still present in 10.0
    CapSpec("compress", until=(9, 1)),  # removed in 9.1
    CapSpec("events"),
    CapSpec("postcopy-ram"),
    CapSpec("x-colo"),
    CapSpec("release-ram"),
    CapSpec("block", until=(9, 1)),  # removed in 9.1
    CapSpec("return-path"),
    CapSpec("pause-before-switchover"),
    CapSpec("multifd"),
    CapSpec("dirty-bitmaps"),
    CapSpec("postcopy-blocktime"),
    CapSpec("late-block-activate"),
    CapSpec("x-ignore-shared"),
    CapSpec("validate-uuid"),
    CapSpec("background-snapshot"),
    CapSpec("zero-copy-send", since=(7, 1)),  # "(since 7.1)" in the QAPI doc
    CapSpec("postcopy-preempt", since=(7, 1)),  # "(since 7.1)"
    CapSpec("switchover-ack", since=(8, 1)),
    CapSpec("dirty-limit", since=(8, 1)),
    CapSpec("mapped-ram", since=(9, 0)),
)

#: Capabilities background-snapshot refuses, in QEMU's list order
#: (``check_caps_background_snapshot``; the first one that is on is named),
#: with the versions that list them (since, until).
BACKGROUND_SNAPSHOT_CONFLICTS: tuple[tuple[str, tuple[int, int], tuple[int, int] | None], ...] = (
    ("postcopy-ram", (0, 0), None),
    ("dirty-bitmaps", (0, 0), None),
    ("postcopy-blocktime", (0, 0), None),
    ("late-block-activate", (0, 0), None),
    ("return-path", (0, 0), None),
    ("multifd", (0, 0), None),
    ("pause-before-switchover", (0, 0), None),
    ("auto-converge", (0, 0), None),
    ("release-ram", (0, 0), None),
    ("rdma-pin-all", (0, 0), None),
    ("compress", (0, 0), (9, 1)),
    ("xbzrle", (0, 0), None),
    ("x-colo", (0, 0), None),
    ("validate-uuid", (0, 0), None),
    ("zero-copy-send", (7, 1), None),  # not in 6.0's list (the capability came in 7.1)
)


def on(name: str):
    def trig(ctx: Ctx) -> bool:
        return ctx.cap(name)
    trig.__name__ = f"on_{name}"
    return trig


def _rule(id: str, summary: str, message: str, violated, trigger=None, *,
          since=(0, 0), until=None, where=CAPS_CHECK) -> Rule:
    kw = {} if trigger is None else {"trigger": trigger}
    return Rule(id=id, command=CAPS_COMMAND, layer="caps", summary=summary, message=message,
                where=where, violated=violated, since=since, until=until, **kw)


def _multifd_compression(ctx: Ctx) -> bool:
    return ctx.cur_params.get("multifd-compression", "none") != "none"


def _tls(ctx: Ctx) -> bool:
    return bool(ctx.cur_params.get("tls-creds") or "")


# -- the state rule -----------------------------------------------------------
STATE_RULES: tuple[Rule, ...] = (
    Rule(
        id="state.caps.migration-active",
        command=CAPS_COMMAND,
        layer="state",
        summary="capabilities cannot change while an outgoing migration runs "
                "(migrate-set-parameters has no such check)",
        message=r"migration (?:process )?(?:is )?in progress",
        where=SET_CAPS,
        violated=lambda ctx: ctx.state.migration_running,
    ),
)


def _bg_conflicts() -> list[Rule]:
    out = []
    for cap, since, until in BACKGROUND_SNAPSHOT_CONFLICTS:
        out.append(_rule(
            f"caps.background-snapshot.conflicts-{cap}",
            f"background-snapshot cannot be combined with {cap}",
            rf"[Bb]ackground-snapshot.*not compatible with {cap}\b",
            (lambda c: lambda ctx: ctx.cap(c))(cap),
            on("background-snapshot"),
            since=since, until=until,
        ))
    return out


# -- migrate_caps_check, in QEMU's order -------------------------------------
CAP_RULES: tuple[Rule, ...] = (
    # #ifndef CONFIG_LIVE_BLOCK_MIGRATION branch; the capability is gone in 9.1.
    _rule("caps.block.requires-live-block-migration",
          "block needs a build with live block migration",
          r"without .*block migration",
          lambda ctx: not ctx.state.build.live_block_migration, on("block"), until=(9, 1)),
    # #ifndef CONFIG_REPLICATION branch.
    _rule("caps.x-colo.requires-replication",
          "x-colo needs a build with replication",
          r"replication.*COLO|COLO.*replication",
          lambda ctx: not ctx.state.build.replication, on("x-colo")),
    # Only when postcopy-ram goes from off to on, and only in runstate inmigrate
    # (the destination): postcopy_ram_supported_by_host() probes userfaultfd.
    _rule("caps.postcopy-ram.requires-host-support",
          "on the destination, turning postcopy-ram on needs userfaultfd",
          r"[Pp]ostcopy is not supported",
          lambda ctx: (not ctx.old_caps.get("postcopy-ram") and ctx.state.inmigrate
                       and not ctx.state.host.userfaultfd),
          on("postcopy-ram")),
    _rule("caps.postcopy-ram.conflicts-x-ignore-shared",
          "postcopy-ram cannot be combined with x-ignore-shared",
          r"[Pp]ostcopy.*ignore-shared",
          lambda ctx: ctx.cap("x-ignore-shared"), on("postcopy-ram")),
    # Present in 8.2 and 10.0, absent in 7.2; 8.1 is the (unverified point).
    _rule("caps.postcopy-ram.conflicts-multifd",
          "postcopy-ram cannot be combined with multifd",
          r"[Pp]ostcopy.*multifd",
          lambda ctx: ctx.cap("multifd"), on("postcopy-ram"), since=(8, 1)),
    # migrate_query_write_tracking(): kernel feature, then guest memory layout.
    _rule("caps.background-snapshot.requires-uffd-wp",
          "background-snapshot needs userfaultfd write-protect in the host kernel",
          r"[Bb]ackground-snapshot.*not supported by host",
          lambda ctx: not ctx.state.host.uffd_wp, on("background-snapshot")),
    _rule("caps.background-snapshot.requires-wp-compatible-memory",
          "background-snapshot needs guest RAM that can be write-protected",
          r"[Bb]ackground-snapshot.*memory configuration",
          lambda ctx: not ctx.state.host.wp_compatible, on("background-snapshot")),
    *_bg_conflicts(),
    # CONFIG_LINUX: one check, one message, several reasons (split here by reason).
    _rule("caps.zero-copy-send.requires-linux",
          "zero-copy-send exists only on Linux hosts",
          r"[Zz]ero.copy.*Linux",
          lambda ctx: not ctx.state.host.linux, on("zero-copy-send"), since=(7, 1)),
    _rule("caps.zero-copy-send.requires-multifd",
          "zero-copy-send needs multifd",
          r"[Zz]ero.copy.*non-compressed.*multifd",
          lambda ctx: ctx.state.host.linux and not ctx.cap("multifd"), on("zero-copy-send"),
          since=(7, 1)),
    _rule("caps.zero-copy-send.conflicts-compress",
          "zero-copy-send cannot be combined with compress",
          r"[Zz]ero.copy.*non-compressed.*multifd",
          lambda ctx: ctx.state.host.linux and ctx.cap("compress"), on("zero-copy-send"),
          since=(7, 1), until=(9, 1)),
    _rule("caps.zero-copy-send.conflicts-xbzrle",
          "zero-copy-send cannot be combined with xbzrle",
          r"[Zz]ero.copy.*non-compressed.*multifd",
          lambda ctx: ctx.state.host.linux and ctx.cap("xbzrle"), on("zero-copy-send"),
          since=(7, 1)),
    # The next two read the *current* parameters (not part of this request).
    _rule("caps.zero-copy-send.conflicts-multifd-compression",
          "zero-copy-send cannot be turned on while multifd-compression is not none",
          r"[Zz]ero.copy.*non-compressed.*multifd",
          lambda ctx: ctx.state.host.linux and _multifd_compression(ctx), on("zero-copy-send"),
          since=(7, 1)),
    _rule("caps.zero-copy-send.conflicts-tls",
          "zero-copy-send cannot be turned on while tls-creds is set",
          r"[Zz]ero.copy.*non-compressed.*multifd",
          lambda ctx: ctx.state.host.linux and _tls(ctx), on("zero-copy-send"), since=(7, 1)),
    # 7.2 (and 8.0, unverified point) only: in runstate inmigrate, multifd needs a
    # socket transport for the last migrate-incoming (before any, it is allowed).
    # Not in 6.0 (nor in its 6.0.91 e2k fork); posted July 2021 ("migration:
    # allow multifd for socket protocol only"): 6.2 is the (unverified point).
    _rule("caps.multifd.requires-multichannel-transport",
          "on the destination, multifd needs a tcp/unix/vsock incoming URI",
          r"multifd.*not supported by (?:the )?current protocol",
          lambda ctx: (ctx.state.inmigrate and ctx.state.incoming_started
                       and ctx.state.incoming_scheme not in ("tcp", "unix", "vsock")),
          on("multifd"), since=(6, 2), until=(8, 1)),
    _rule("caps.postcopy-preempt.requires-postcopy-ram",
          "postcopy-preempt needs postcopy-ram",
          r"[Pp]reempt.*requires postcopy",
          lambda ctx: not ctx.cap("postcopy-ram"), on("postcopy-preempt"), since=(7, 1)),
    _rule("caps.postcopy-preempt.conflicts-compress",
          "postcopy-preempt cannot be combined with compress",
          r"[Pp]reempt.*compress",
          lambda ctx: ctx.cap("compress"), on("postcopy-preempt"), since=(7, 1), until=(9, 1)),
    # From 8.1 (unverified point; commit 82137e6c8c "migration: enforce multifd
    # and postcopy preempt to be set before incoming"): refused after
    # migrate-incoming when it was off.
    # Builds 8.1.0 .. 10.0.0 refuse it even when it already was on: deviation
    # caps-before-incoming-refused-when-already-on.
    _rule("caps.postcopy-preempt.requires-before-incoming-if-off",
          "postcopy-preempt cannot be turned on after migrate-incoming",
          r"[Pp]reempt.*before incoming",
          lambda ctx: ctx.state.incoming_started and not ctx.old_caps.get("postcopy-preempt"),
          on("postcopy-preempt"), since=(8, 1)),
    _rule("caps.multifd.conflicts-compress",
          "multifd cannot be combined with compress",
          r"[Mm]ultifd.*compress",
          lambda ctx: ctx.cap("compress"), on("multifd"), until=(9, 1)),
    # Same commit and the same deviation as the preempt rule above.
    _rule("caps.multifd.requires-before-incoming-if-off",
          "multifd cannot be turned on after migrate-incoming",
          r"[Mm]ultifd.*before incoming",
          lambda ctx: ctx.state.incoming_started and not ctx.old_caps.get("multifd"),
          on("multifd"), since=(8, 1)),
    _rule("caps.switchover-ack.requires-return-path",
          "switchover-ack needs return-path",
          r"switchover-ack.*return-path",
          lambda ctx: not ctx.cap("return-path"), on("switchover-ack"), since=(8, 1)),
    _rule("caps.dirty-limit.conflicts-auto-converge",
          "dirty-limit cannot be combined with auto-converge",
          r"dirty-limit.*auto-converge",
          lambda ctx: ctx.cap("auto-converge"), on("dirty-limit"), since=(8, 1)),
    _rule("caps.dirty-limit.requires-kvm-dirty-ring",
          "dirty-limit needs KVM with a dirty ring",
          r"dirty-limit.*KVM",
          lambda ctx: not (ctx.state.accel == "kvm" and ctx.state.host.kvm_dirty_ring),
          on("dirty-limit"), since=(8, 1)),
    _rule("caps.multifd.conflicts-xbzrle",
          "multifd cannot be combined with xbzrle",
          r"[Mm]ultifd.*xbzrle",
          lambda ctx: ctx.cap("xbzrle"), on("multifd"), since=(8, 1)),
    # Posted Oct 2023, present in 8.2 and 9.0.
    _rule("caps.compress.conflicts-xbzrle",
          "compress cannot be combined with xbzrle",
          r"[Cc]ompress.*xbzrle",
          lambda ctx: ctx.cap("xbzrle"), on("compress"), since=(8, 2), until=(9, 1)),
    _rule("caps.mapped-ram.conflicts-xbzrle",
          "mapped-ram cannot be combined with xbzrle",
          r"[Mm]apped-ram.*xbzrle",
          lambda ctx: ctx.cap("xbzrle"), on("mapped-ram"), since=(9, 0)),
    _rule("caps.mapped-ram.conflicts-compress",
          "mapped-ram cannot be combined with compress",
          r"[Mm]apped-ram.*compress",
          lambda ctx: ctx.cap("compress"), on("mapped-ram"), since=(9, 0), until=(9, 1)),
    _rule("caps.mapped-ram.conflicts-postcopy-ram",
          "mapped-ram cannot be combined with postcopy-ram",
          r"[Mm]apped-ram.*postcopy",
          lambda ctx: ctx.cap("postcopy-ram"), on("mapped-ram"), since=(9, 0)),
)

#: For probe generation: rules of the form "A needs B" — probes turn A and B on
#: together with every third capability, so the rules after the first pass run.
REQUIRES: tuple[tuple[str, tuple[str, ...], tuple[int, int]], ...] = (
    ("zero-copy-send", ("multifd",), (7, 1)),
    ("postcopy-preempt", ("postcopy-ram",), (7, 1)),
    ("switchover-ack", ("return-path",), (8, 1)),
)
