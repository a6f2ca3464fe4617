"""Versioned machine types two QEMU builds have in common.

Cross-version migration needs the same *versioned* machine type on both sides:
the source sends its machine type's name in the "configuration" section and
the destination refuses any other name (``configuration_post_load`` in
migration/savevm.c: "Machine type received is ... and local is ...").  An
alias such as ``q35`` or ``pc`` names a different version in every release
(``pc-q35-7.2`` in 7.2, ``pc-q35-10.0`` in 10.0), so it cannot be used as is.

This module finds a type both builds know from the machine lists each build
reported itself (``query-machines``, see ``harness.qemu.build``); no version or
machine name is written down here.  Versioned names follow QEMU's
``<family>-<major>.<minor>`` convention (``DEFINE_Q35_MACHINE`` /
``DEFINE_I440FX_MACHINE`` in hw/i386/pc_q35.c and pc_piix.c, ``virt-X.Y`` in
hw/arm/virt.c); a board without versions (e.g. ``isapc``, ``microvm``, most
non-PC boards and the e2k fork's) has no cross-version guarantee at all, and
``common_machine_type`` then answers None.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from harness.qemu.build import QemuBuild

#: ``pc-q35-7.2`` -> family ``pc-q35``, version ``(7, 2)``.
_VERSIONED = re.compile(r"^(?P<family>.+?)-(?P<version>\d+(?:\.\d+)+)$")


@dataclass(frozen=True, order=True)
class VersionedMachine:
    """A machine type name split into family and numeric version."""

    family: str
    version: tuple[int, ...]
    name: str

    @classmethod
    def parse(cls, name: str) -> "VersionedMachine | None":
        m = _VERSIONED.match(name)
        if m is None:
            return None
        return cls(m["family"], tuple(int(x) for x in m["version"].split(".")), name)


def machine_family(build: QemuBuild, name: str) -> str | None:
    """The versioned family ``name`` belongs to in ``build``.

    ``name`` may be an alias (``q35``: resolved through the build's own list),
    a versioned type (``pc-q35-7.2``) or a family (``pc-q35``).  None when the
    build has no versioned type for it.
    """
    resolved = build.resolve_machine(name)
    if resolved is not None:
        parsed = VersionedMachine.parse(resolved)
        return parsed.family if parsed else None
    if any((p := VersionedMachine.parse(m)) is not None and p.family == name
           for m in build.machines):
        return name
    return None


def versioned_machines(build: QemuBuild, family: str) -> dict[tuple[int, ...], VersionedMachine]:
    """The build's machine types of ``family``, by version."""
    out: dict[tuple[int, ...], VersionedMachine] = {}
    for name in build.machines:
        parsed = VersionedMachine.parse(name)
        if parsed is not None and parsed.family == family:
            out[parsed.version] = parsed
    return out


def common_machine_type(src: QemuBuild, dst: QemuBuild, family: str) -> str | None:
    """The newest versioned machine type of ``family`` that both builds know.

    ``family`` is what a target names (``q35``, ``pc``, ``pc-q35``, or even a
    versioned type, whose family is then used).  The newest common version is
    the older build's newest, i.e. the machine a guest started on the older
    QEMU would have; types either build marks deprecated are used only when
    nothing else is common.  None when the name is unknown to either build,
    resolves to different families, or no version is common.
    """
    fam_src, fam_dst = machine_family(src, family), machine_family(dst, family)
    if fam_src is None or fam_src != fam_dst:
        return None
    mine, theirs = versioned_machines(src, fam_src), versioned_machines(dst, fam_dst)
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None

    def deprecated(version: tuple[int, ...]) -> bool:
        return any(b.machines[m[version].name].deprecated
                   for b, m in ((src, mine), (dst, theirs)))

    usable = [v for v in common if not deprecated(v)] or common
    return mine[usable[-1]].name
