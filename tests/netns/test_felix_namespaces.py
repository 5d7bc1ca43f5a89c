"""Namespaced policy and namespaceSelector, on real packets.

Namespace ``prod``: client ``pa``, server ``pb``. Namespace ``dev``: client ``dc``, server
``db``. Both servers carry the same labels; both clients too.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.felix import ALLOW_ALL, DENY, FelixBed, gnp, np_


def test_namespaced_policy_and_namespace_selector(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    p = ("allow-all",)
    pa = bed.add_workload("pa", "10.65.0.1", {"role": "client"}, namespace="prod", profiles=p)
    pb = bed.add_workload("pb", "10.65.0.2", {"role": "server"}, namespace="prod", profiles=p)
    dc = bed.add_workload("dc", "10.65.0.3", {"role": "client"}, namespace="dev", profiles=p)
    db = bed.add_workload("db", "10.65.0.4", {"role": "server"}, namespace="dev", profiles=p)
    for srv in (pb, db):
        bed.serve(srv.netns, (8080,))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    pa_pb = bed.can_tcp(pa.netns, pb.ip, 8080)
    pa_db = bed.can_tcp(pa.netns, db.ip, 8080)
    dc_pb = bed.can_tcp(dc.netns, pb.ip, 8080)
    dc_db = bed.can_tcp(dc.netns, db.ip, 8080)
    bed.expect({"pa->pb": (pa_pb, True), "pa->db": (pa_db, True)})

    # A NetworkPolicy in prod selects only prod's server, not the same-labelled one in dev.
    bed.put(np_("deny", "prod", "role == 'server'", ingress=[DENY]))
    bed.expect({"np deny: pa->pb": (pa_pb, False), "np deny: pa->db": (pa_db, True)})

    # Its rule selectors are limited to its namespace too.
    bed.put(
        np_(
            "deny",
            "prod",
            "role == 'server'",
            ingress=[{"action": "Allow", "source": {"selector": "role == 'client'"}}],
        )
    )
    bed.expect({"np sel: pa->pb": (pa_pb, True), "np sel: dc->pb": (dc_pb, False)})

    # namespaceSelector: sources in dev only.
    bed.put(
        np_(
            "deny",
            "prod",
            "role == 'server'",
            ingress=[
                {
                    "action": "Allow",
                    "source": {"namespaceSelector": "projectcalico.org/name == 'dev'"},
                }
            ],
        )
    )
    bed.expect({"nssel dev: dc->pb": (dc_pb, True), "nssel dev: pa->pb": (pa_pb, False)})
    bed.delete("NetworkPolicy", "deny", "prod")

    # A global policy with a namespaceSelector (and a selector) on its rule.
    bed.put(
        gnp(
            "g",
            "role == 'server'",
            ingress=[
                {
                    "action": "Allow",
                    "source": {
                        "namespaceSelector": "projectcalico.org/name == 'prod'",
                        "selector": "role == 'client'",
                    },
                }
            ],
        )
    )
    bed.expect(
        {
            "gnp nssel: pa->db": (pa_db, True),
            "gnp nssel: dc->db": (dc_db, False),
            "gnp nssel: pa->pb": (pa_pb, True),
            "gnp nssel: dc->pb": (dc_pb, False),
        }
    )
