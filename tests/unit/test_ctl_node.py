"""`tabbyctl node status` rendering, and its error when no agent answers."""

from __future__ import annotations

from click.testing import CliRunner

from ctl.main import cli
from ctl.node import render_status

STATUS = {
    "node": "node1",
    "address": "198.51.100.2/26",
    "role": "mesh",
    "inSync": True,
    "exabgp": {"running": True, "restarts": 0},
    "peers": [
        {
            "peer": "198.51.100.3",
            "type": "mesh",
            "state": "established",
            "since": 0,
            "prefixesReceived": 2,
            "prefixesInstalled": 2,
            "prefixesAnnounced": 1,
        },
        {
            "peer": "198.51.100.9",
            "type": "global",
            "state": "down",
            "since": 0,
            "prefixesReceived": 0,
            "prefixesInstalled": 0,
            "prefixesAnnounced": 0,
        },
    ],
}


def test_render_status_rows() -> None:
    text = render_status(STATUS)
    lines = text.splitlines()
    assert "role: mesh" in lines[0]
    header = next(line for line in lines if line.startswith("PEER ADDRESS"))
    assert header.split() == [
        "PEER",
        "ADDRESS",
        "PEER",
        "TYPE",
        "STATE",
        "SINCE",
        "RECEIVED",
        "INSTALLED",
        "ANNOUNCED",
    ]
    row = next(line for line in lines if line.startswith("198.51.100.3"))
    assert "node-to-node mesh" in row and " up " in row and row.split()[-3:] == ["2", "2", "1"]
    down = next(line for line in lines if line.startswith("198.51.100.9"))
    assert "global" in down and "down" in down


def test_render_status_without_peers() -> None:
    assert "No BGP peers configured." in render_status({**STATUS, "peers": []})


def test_render_status_ipip_line_only_when_needed() -> None:
    assert "IP-in-IP" not in render_status({**STATUS, "ipip": {"needed": False}})
    up = {"needed": True, "device": "tunl0", "available": True, "address": "10.65.0.1", "mtu": 1480}
    assert "IP-in-IP: tunl0, address 10.65.0.1, MTU 1480" in render_status({**STATUS, "ipip": up})
    missing = {**up, "available": False}
    text = render_status({**STATUS, "ipip": missing})
    assert "no ipip" in text and "pending" in text


def test_status_without_agent_fails_with_one_line() -> None:
    res = CliRunner().invoke(cli, ["node", "status", "--port", "1"])
    assert res.exit_code != 0
    assert "not answering" in res.output
