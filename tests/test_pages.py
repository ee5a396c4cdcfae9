"""The pages over the shared read model, served by a real twisted.web site on loopback
and read over HTTP: what each page shows, links, paging, filters, and hostile names
shown as text. (tests/test_browser.py opens them in a real browser.)"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from bridge import documents as docs
from bridge.directory import views
from bridge.directory.model import Directory
from bridge.model import Record
from bridge.web.cf import ChannelFinderAPI, QueryRunner
from bridge.web.pages import Pages
from tests.directory_data import IOC_A, IOC_B, K, directory, v2_record

SCRIPT = '<script>alert("x")</script>'


def add_hostile(cf: Directory) -> None:
    """A record named like a script, with a DESC that closes attributes."""
    record = Record(0, SCRIPT, "ai", [], {"archive": "<b>bold</b>"}, '" onmouseover="x')
    cf.apply(K.record(IOC_A, SCRIPT), v2_record(record), 100)


class PagesTests(TestCase):
    def setUp(self) -> None:
        self.directory = directory()
        add_hostile(self.directory)
        self.runner = QueryRunner(reactor)
        self.runner.start()
        self.addCleanup(self.runner.stop)
        root = Resource()
        root.putChild(
            b"ChannelFinder", ChannelFinderAPI(self.directory, self.runner, "/s").resource()
        )
        Pages(self.directory, self.runner, status=lambda: {"view": "current"}).mount(root)
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def get(self, path: str) -> tuple[int, str]:
        response = await Agent(reactor).request(b"GET", (self.base + path).encode())
        body = await readBody(response)
        return response.code, body.decode("utf-8")

    async def test_overview_figures_and_its_json(self) -> None:
        status, page = await self.get("/")
        self.assertEqual(status, 200)
        self.assertIn('data-live="iocs_up">1<', page)
        self.assertIn('data-live="iocs_down">1<', page)
        self.assertIn('data-live="channels">7<', page)
        self.assertIn('data-live="duplicates">1<', page)
        self.assertIn('src="/static/live.js"', page)
        status, body = await self.get("/overview.json")
        data = json.loads(body)
        self.assertEqual(data["figures"]["iocs_down"], "1")
        self.assertEqual(data["figures"]["view"], "current")
        first = data["tables"]["recent"][0]
        self.assertEqual(first[0], {"text": IOC_B, "href": "/iocs/hostB:IOCB"})
        self.assertEqual(first[1]["class"], "status down")

    async def test_ioc_list_filters_and_sorts(self) -> None:
        _, page = await self.get("/iocs")
        self.assertLess(page.index(IOC_A), page.index(IOC_B))
        _, page = await self.get("/iocs?sort=iocid&desc=1")
        self.assertLess(page.index(">" + IOC_B), page.index(">" + IOC_A))
        _, page = await self.get("/iocs?status=down")
        self.assertIn(IOC_B, page)
        self.assertNotIn(">" + IOC_A + "<", page)
        _, page = await self.get("/iocs?q=alice")  # the engineer
        self.assertIn(">" + IOC_A + "<", page)
        self.assertNotIn(">" + IOC_B + "<", page)

    async def test_ioc_page_identity_environment_records(self) -> None:
        status, page = await self.get("/iocs/" + quote(IOC_A))
        self.assertEqual(status, 200)
        for shown in ("10.0.0.1:40000", "alice", "RSRV_SERVER_PORT", "Beam x", 'id="history"'):
            self.assertIn(shown, page)
        # SR:C01:BPM2 is a record of B (inactive) whose name the live A owns: a
        # duplicate, linked to its owner, with B's own type and DESC.
        _, page = await self.get("/iocs/" + quote(IOC_B))
        self.assertRegex(
            page,
            r"SR:C01:BPM2</a></td><td>longin</td><td>Beam y on B</td>"
            r"<td><a href=\"/iocs/hostA:IOCA\"",
        )
        _, page = await self.get("/iocs/" + quote(IOC_A) + "?size=1")
        self.assertIn('rel="next"', page)
        _, page = await self.get("/iocs/nobody")
        self.assertIn("No IOC named", page)

    async def test_pv_search_pages_past_the_first(self) -> None:
        _, page = await self.get("/pvs?q=bpm&size=2")
        self.assertIn("4 PVs match", page)
        names = re.findall(r'<tr><td><a href="/pvs/[^"]*">([^<]*)</a>', page)
        self.assertEqual(names, ["SR:C01:BPM1", "SR:C01:BPM1:X"])
        following = re.search(r'href="([^"]*)" rel="next"', page)
        assert following is not None
        _, page = await self.get(following.group(1).replace("&amp;", "&"))
        names = re.findall(r'<tr><td><a href="/pvs/[^"]*">([^<]*)</a>', page)
        self.assertEqual(names, ["SR:C01:BPM2", "sr:c02:bpm3"])
        self.assertNotIn('rel="next"', page)
        _, page = await self.get("/pvs?q=bpm&active=1")
        self.assertIn("4 PVs match", page)  # the live A owns SR:C01:BPM2
        _, page = await self.get("/pvs?q=BR:Q*+recordType=calc")
        self.assertIn("1 PVs match", page)
        _, page = await self.get("/pvs?iocid=" + quote(IOC_B))
        self.assertIn("2 PVs match", page)
        status, _ = await self.get("/pvs?q=pvStatus%3D%7C")  # only separators
        self.assertEqual(status, 400)

    async def test_pv_page_claimants_aliases_properties(self) -> None:
        _, page = await self.get("/pvs/SR:C01:BPM2")
        self.assertIn("2 IOC(s)", page)
        self.assertIn("<td>Beam y on B</td>", page)  # each claimant's own DESC
        self.assertIn("<td>Beam y</td>", page)
        self.assertIn("duplicateCount", page)
        for iocid in (IOC_A, IOC_B):
            self.assertIn(f'href="/iocs/{iocid}"', page)
        _, page = await self.get("/pvs/SR:C01:BPM1")
        self.assertIn('<li><a href="/pvs/SR:C01:BPM1:X">SR:C01:BPM1:X</a></li>', page)
        self.assertIn("<td>archive</td><td>Monitor</td>", page)
        _, page = await self.get("/pvs/SR:C01:BPM1:X")
        self.assertIn("Alias of", page)
        status, _ = await self.get("/pvs/NOPE")
        self.assertEqual(status, 404)

    async def test_pv_json_answers_as_recsync_pv_prints(self) -> None:
        status, body = await self.get("/pv.json?name=SR:C01:BPM2&name=SR:C01:BPM1:X&name=NOPE")
        self.assertEqual(status, 200)
        data = json.loads(body)
        self.assertEqual((data["prefix"], data["revision"]), ("/recsync", 100))
        owned = {"owner": IOC_A, "record": "SR:C01:BPM2", "type": "ao", "alias": False}
        self.assertEqual(
            data["pvs"],
            [
                {"pv": "SR:C01:BPM2", **owned, "status": "active", "claims": [IOC_A, IOC_B]},
                {"pv": "SR:C01:BPM1:X", "owner": IOC_A, "record": "SR:C01:BPM1", "type": "ai",
                 "alias": True, "status": "active", "claims": [IOC_A]},
                {"pv": "NOPE", "status": "unknown"},
            ],
        )  # fmt: skip
        self.assertEqual((await self.get("/pv.json"))[0], 400)
        self.directory.state.revision = 0  # as before the first load
        self.assertEqual((await self.get("/pv.json?name=X"))[0], 503)

    async def test_duplicates_and_bridges(self) -> None:
        _, page = await self.get("/duplicates")
        self.assertIn("1 names are claimed", page)
        self.assertIn('href="/pvs/SR:C01:BPM2"', page)
        bridge = docs.bridge_document("bridge-host", 5075, "1.0", "2026-11-23T21:00:00.000Z")
        self.directory.apply(K.bridge("bridge-a"), docs.dumps(bridge))
        self.directory.apply(K.alive(IOC_A), docs.dumps(docs.alive_document("bridge-a", "x")))
        _, page = await self.get("/bridges")
        self.assertIn("<td>bridge-a</td><td>bridge-host</td><td>5075</td>", page)
        self.assertIn(">1</a></td>", page)  # one IOC alive on it

    async def test_peer_strings_show_as_text(self) -> None:
        for path in ("/pvs?q=*script*", "/pvs/" + quote(SCRIPT, safe=""), "/iocs/" + quote(IOC_A)):
            status, page = await self.get(path)
            self.assertEqual(status, 200, path)
            self.assertNotIn("<script>alert", page)
            self.assertIn('&lt;script&gt;alert("x")&lt;/script&gt;', page.replace("&quot;", '"'))
        _, page = await self.get("/pvs/" + quote(SCRIPT, safe=""))
        self.assertIsNone(re.search("<[^>]*onmouseover", page))  # text, never an attribute
        self.assertIn("&lt;b&gt;bold&lt;/b&gt;", page)


def test_search_text_becomes_channelfinder_parameters() -> None:
    assert views.search_parameters("") == [("~name", "*")]
    assert views.search_parameters("SR*:BPM? bpm =EXACT") == [
        ("~name", "SR*:BPM?"),
        ("~name", "*bpm*"),
        ("~name", "EXACT"),
    ]
    assert views.search_parameters("pvStatus=Active tag=golden archive!=*") == [
        ("pvStatus", "Active"),
        ("~tag", "golden"),
        ("archive!", "*"),
        ("~name", "*"),
    ]


def test_control_characters_show_escaped() -> None:
    from bridge.web import html

    assert html.shown("a\x01b\x7f") == "a\\x01b\\x7f"
    assert html.shown("\ud800x") == "?x"
    assert html.pv_href("..") == "/pv?name=.."
    assert html.pv_href("A/B:C") == "/pvs/A%2FB:C"


def test_ioc_rows_count_owned_and_shared() -> None:
    rows = {r.iocid: r for r in views.ioc_rows(directory().state)}
    assert (rows[IOC_A].pvs, rows[IOC_A].shared, rows[IOC_A].up) == (4, 1, True)
    assert (rows[IOC_B].pvs, rows[IOC_B].shared, rows[IOC_B].up) == (2, 0, False)
