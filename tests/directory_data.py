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


def documents() -> list[tuple[str, bytes]]:
    """Keys and values as the bridge stores them; SR:C01:BPM2 is claimed by both IOCs,
    owned by IOC B (the later uploader)."""
    out: list[tuple[str, bytes]] = []
    claims: dict[str, list[str]] = {}
    for iocid, _, _, _, records in FLEET:
        for record in records:
            for name, _ in docs_module.pv_names(record):
                claims.setdefault(name, []).append(iocid)
    for iocid, status, host, env, records in FLEET:
        doc = docs_module.ioc_document(
            iocid=iocid,
            status=status,
            hostname=host,
            iocname=iocid.split(":")[1],
            ip="10.0.0.1" if iocid == IOC_A else "10.0.0.2",
            port=40000,
            env=env,
            bridge_id="bridge-a",
            connected="2026-11-23T21:00:00.123Z",
            uploaded="2026-11-23T21:00:01.456Z",
            disconnected=None if status == "active" else "2026-11-23T22:00:00.000Z",
            records=len(records),
            aliases=sum(len(r.aliases) for r in records),
        )
        out.append((K.ioc(iocid), docs_module.dumps(doc)))
        for record in records:
            out.append((K.record(iocid, record.name), docs_module.record_value(record, iocid)))
            for name, alias in docs_module.pv_names(record):
                index = docs_module.pv_document(
                    iocid, record.name, record.rtype, alias, claims[name]
                )
                out.append((K.pv(name), docs_module.dumps(index)))
    return out


def directory(shape: ChannelShape = SHAPE, *, bulk: bool = False) -> Directory:
    """The fleet, applied one document at a time (as a watch does) or loaded at once."""
    built = Directory(shape, PREFIX)
    docs = documents()
    if bulk:
        built.load(sorted(dict(docs).items()), revision=1)
    else:
        for key, value in docs:
            built.apply(key, value)
    return built
