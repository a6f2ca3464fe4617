"""The destination is not the same machine: ``validate-uuid`` with different,
source-only and destination-only uuids, another RAM size, another machine
type.  A real mismatch must be refused by the destination with the right
error (and the source run on); what QEMU lets through must load."""
from __future__ import annotations

import dataclasses
import logging
import re

from harness.results import CheckResult
from harness.scenarios.catalogue import ERRORS
from harness.scenarios.registry import scenario
from harness.scenarios.rig import TARGET, Rig, Side
from harness.scenarios.verdicts import judge_state
from harness.units import MiB

log = logging.getLogger(__name__)

UUID_A = "6f1a3c52-7d0e-4b8a-9c11-2e5f4a6b7c8d"
UUID_B = "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b"
#: return-path lets the source hear the destination's verdict.  Without it the
#: source learns of a refused stream only from a broken pipe once the
#: destination has exited (seen here on 7.2 and 10.0 for these 128 MiB
#: guests: 'failed', "Unable to write to socket: Broken pipe"), which a stream
#: small enough to fit the socket buffers could outrun.
RP = {"return-path": True}
#: Destination exit after a refused load (QEMU exits by default).
EXIT_TIMEOUT = 10.0


async def _refused_by_destination(rig: Rig, src: Side, dst: Side, error: str) -> None:
    """The destination refuses the stream: it fails to load (and exits, QEMU's
    default), the error on its stderr; the source ends 'failed' and runs on."""
    run = await rig.migrate(src, dst, await rig.listen(dst))
    rig.add(judge_state("migration-failed", run.status, "failed", run.states))
    rig.figures["source_error_desc"] = run.info.get("error-desc")
    code = await dst.m.wait_exit(EXIT_TIMEOUT)
    rig.figures["destination_exit"] = code
    log.info("destination exit %s after the refused load", code)
    rig.expect_text(error, dst.stderr())
    await rig.source_running(src)


@scenario("uuid-mismatch", "validate-uuid with a different -uuid on each side: refused",
          capabilities=("validate-uuid", "return-path"))
async def uuid_mismatch(rig: Rig) -> None:
    """``validate-uuid`` with a different ``-uuid`` on each side: refused; the
    same uuid then succeeds."""
    caps = {"validate-uuid": True, **RP}
    src = await rig.source(caps=caps, extra=("-uuid", UUID_A))
    dst = await rig.destination(caps=caps, extra=("-uuid", UUID_B))
    await _refused_by_destination(rig, src, dst, "uuid-mismatch")
    got = ERRORS["uuid-mismatch"]
    m = re.search(got.pattern, rig.figures["errors"]["uuid-mismatch"]["text"] or "")
    rig.add(CheckResult("uuid-mismatch-names-both", bool(m and m["src"] == UUID_A and
                                                         m["dst"] == UUID_B),
                        f"received/local uuids in the error: {m.groups() if m else None}"))
    await rig.migrate_ok(src, dst_kw={"caps": caps, "extra": ("-uuid", UUID_A)},
                         label="same-uuid-migration")


@scenario("uuid-source-only", "validate-uuid with -uuid on the source only: warned, loaded",
          capabilities=("validate-uuid", "return-path"))
async def uuid_source_only(rig: Rig) -> None:
    """``validate-uuid`` with ``-uuid`` on the source only: the destination warns
    and loads (savevm.c vmstate_uuid_post_load returns 0 when no local uuid)."""
    caps = {"validate-uuid": True, **RP}
    src = await rig.source(caps=caps, extra=("-uuid", UUID_A))
    dst = await rig.migrate_ok(src, dst_kw={"caps": caps}, label="migration")
    rig.expect_text("uuid-unset-warning", dst.stderr())
    # A source left in postmigrate may not migrate again (migrate_prepare).
    await rig.expect_refusal("migrate-from-postmigrate", src.m, "migrate",
                             {"uri": f"unix:{rig.workdir / 'x.sock'}"})


@scenario("uuid-destination-only",
          "validate-uuid with -uuid on the destination only: loaded, no message",
          capabilities=("validate-uuid", "return-path"))
async def uuid_destination_only(rig: Rig) -> None:
    """``validate-uuid`` with ``-uuid`` on the destination only: nothing to
    compare is sent (savevm.c vmstate_uuid_needed is false without a source
    uuid), so the migration succeeds without a warning."""
    caps = {"validate-uuid": True, **RP}
    src = await rig.source(caps=caps)
    dst = await rig.migrate_ok(src, dst_kw={"caps": caps, "extra": ("-uuid", UUID_B)},
                               label="migration")
    err = dst.stderr()
    rig.add(CheckResult("no-uuid-message", "UUID" not in err,
                        f"destination stderr: {err.strip()[-200:] or '(empty)'}"))


@scenario("ram-size-mismatch", "destination with 256 MiB of RAM, source 128 MiB: refused",
          capabilities=("return-path",),
          peak_memory=TARGET.memory + 256 * MiB + TARGET.memory)
async def ram_size_mismatch(rig: Rig) -> None:
    """Destination with 256 MiB of RAM, source 128 MiB: the RAM block's size check."""
    src = await rig.source(caps=RP)
    dst = await rig.destination(caps=RP,
                                target=dataclasses.replace(TARGET, memory=256 * MiB))
    await _refused_by_destination(rig, src, dst, "ram-size")
    await rig.migrate_ok(src, dst_kw={"caps": RP})


@scenario("machine-type-mismatch", "destination machine pc, source q35: refused",
          capabilities=("return-path",), machines=("q35", "pc"))
async def machine_mismatch(rig: Rig) -> None:
    """Destination ``pc``, source ``q35``: the configuration section's check."""
    src = await rig.source(caps=RP)
    dst = await rig.destination(caps=RP, target=dataclasses.replace(TARGET, machine="pc"))
    await _refused_by_destination(rig, src, dst, "machine-type")
    m = re.search(ERRORS["machine-type"].pattern, rig.figures["errors"]["machine-type"]["text"]
                  or "")
    want = (rig.machine_type(TARGET), rig.machine_type(dataclasses.replace(TARGET,
                                                                           machine="pc")))
    rig.add(CheckResult("machine-type-names-both", bool(m) and m.groups() == want,
                        f"received/local in the error: {m.groups() if m else None}, "
                        f"expected {want}"))
    await rig.migrate_ok(src, dst_kw={"caps": RP})
