"""A small directory with known channels, built from the documents the bridge writes."""

from __future__ import annotations

from bridge import documents as docs_module
from bridge.directory.channels import ChannelShape
from bridge.directory.model import Directory
from bridge.model import Record

PREFIX = "/recsync"
K = docs_module.Keys(PREFIX)
SHAPE = ChannelShape(
    alias=True, record_type=True, record_desc=True, infotags=("archive",), username="cfstore"
)

IOC_A = "hostA:IOCA"
IOC_B = "hostB:IOCB"
#: (iocid, status, hostname, env, records)
FLEET = [
    (
        IOC_A,
        "active",
        "hostA",
        {"ENGINEER": "alice", "RSRV_SERVER_PORT": "5064", "PVAS_SERVER_PORT": "5075"},
        [
            Record(0, "SR:C01:BPM1", "ai", ["SR:C01:BPM1:X"], {"archive": "Monitor"}, "Beam x"),
            Record(0, "SR:C01:BPM2", "ao", [], {}, "Beam y"),
            Record(0, "sr:c02:bpm3", "bi", [], {"archive": "Scan"}, None),
        ],
    ),
    (
        IOC_B,
        "inactive",
        "hostB",
        {"RSRV_SERVER_PORT": "5064"},
        [
            Record(0, "BR:Q1", "ai", [], {}, "Quad, one"),
            Record(0, "BR:Q*2", "calc", [], {}, None),
            Record(0, "SR:C01:BPM2", "longin", [], {}, "Beam y on B"),
        ],
    ),
]
#: Every channel, sorted as a ChannelFinder sorts them (code points).
ALL = sorted(["SR:C01:BPM1", "SR:C01:BPM1:X", "SR:C01:BPM2", "sr:c02:bpm3", "BR:Q1", "BR:Q*2"])


def v2_record(record: Record) -> bytes:
    """A record document as data model v2 stores it: lean, name and IOC in the key."""
    doc: dict[str, object] = {"type": record.rtype}
    if record.desc is not None:
        doc["desc"] = record.desc
    if record.aliases:
        doc["aliases"] = list(record.aliases)
    if record.infos:
        doc["infos"] = dict(record.infos)
    return docs_module.dumps(doc)


def v1_record(record: Record, iocid: str) -> bytes:
    """A record document as data model v1 stored it: every field, nulls and all."""
    return docs_module.dumps(
        {
            "name": record.name,
            "type": record.rtype,
            "iocid": iocid,
            "desc": record.desc,
            "aliases": list(record.aliases),
            "infos": dict(record.infos),
        }
    )


def ioc_value(iocid: str, status: str, host: str = "hostA", env: dict[str, str] | None = None,
              records: int = 0) -> bytes:  # fmt: skip
    """An IOC document as the bridge writes it."""
    doc = docs_module.ioc_document(
        iocid=iocid,
        status=status,
        hostname=host,
        iocname=iocid.split(":")[1],
        ip="10.0.0.1" if iocid == IOC_A else "10.0.0.2",
        port=40000,
        env=env or {},
        bridge_id="bridge-a",
        connected="2026-11-23T21:00:00.123Z",
        uploaded="2026-11-23T21:00:01.456Z",
        disconnected=None if status == "active" else "2026-11-23T22:00:00.000Z",
        records=records,
        aliases=0,
    )
    return docs_module.dumps(doc)


#: What a v1 bridge also wrote, which the view ignores: name-index entries and marks.
V1_ONLY = [
    (f"{PREFIX}/pvs/SR:C01:BPM2", b'{"iocid":"hostB:IOCB","record":"SR:C01:BPM2",'
     b'"type":"longin","alias":false,"claims":["hostA:IOCA","hostB:IOCB"]}'),
    (f"{PREFIX}/pvs/GHOST", b'{"iocid":"hostA:IOCA","record":"GHOST","type":"ai",'
     b'"alias":false,"claims":["hostA:IOCA"]}'),
    (f"{PREFIX}/shared/hostA:IOCA", b'{"name":"SR:C01:BPM2"}'),
]  # fmt: skip


def documents(form: str = "v2") -> list[tuple[str, bytes, int]]:
    """Keys, values and mod_revisions as a bridge stores the fleet, in the order it
    writes them (IOC A, then IOC B: revisions grow). SR:C01:BPM2 is claimed by both
    IOCs; B uploaded it later but is inactive, so the live A owns it. `form` ``v1``
    stores v1 record documents plus the name index and marks a v1 bridge wrote."""
    out: list[tuple[str, bytes]] = []
    for iocid, status, host, env, records in FLEET:
        out.append((K.ioc(iocid), ioc_value(iocid, status, host, env, len(records))))
        for record in records:
            value = v1_record(record, iocid) if form == "v1" else v2_record(record)
            out.append((K.record(iocid, record.name), value))
    if form == "v1":
        out += V1_ONLY
    return [(key, value, revision) for revision, (key, value) in enumerate(out, start=2)]


def directory(shape: ChannelShape = SHAPE, *, bulk: bool = False, form: str = "v2") -> Directory:
    """The fleet, applied one document at a time (as a watch does) or loaded at once
    (in key order, as a range read gives them)."""
    built = Directory(shape, PREFIX)
    items = documents(form)
    if bulk:
        built.load(sorted(items), revision=items[-1][2])
    else:
        for key, value, revision in items:
            built.apply(key, value, revision)
    return built
