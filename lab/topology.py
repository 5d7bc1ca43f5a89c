"""The lab's plan: names and addresses of every namespace, link and workload (pure).

Role: from ``tabby-lab up`` arguments (nodes, subnets, workloads per node, lab name) compute the
whole topology once, so that building, checking and tearing down all agree on names.
Inputs: ``LabSpec``. Outputs: ``Topology`` (frozen), JSON-serialisable for the state file.

Layout (every namespace is created by the lab and carries its ``ns_prefix``):
  fabric   one namespace holding a Linux bridge per subnet (``br<k>``)
  router   one namespace routing between the subnets (``.1`` of each subnet, ip_forward on);
           with ``tor`` set it stays unconnected and each subnet's ``.1`` is instead the rack's
           top-of-rack router ``<prefix>tor<k>`` (FRR, eBGP; see ``lab.tor``)
  nodes    ``<prefix>n<i>``: ``eth0`` on its subnet's bridge, default route via the router
  infra    etcd is reached from inside every node at 127.0.0.1:2379 (a namespace bridge)
Subnets are /26s of 198.51.100.0/24, then of 203.0.113.0/24 (documentation ranges: never the
machine's uplink 192.0.2.0/24), so up to 8 subnets of up to 61 nodes.
Invariants: names are deterministic and fit the kernel's limits (interface names <= 15 chars);
node i of N is on subnet (i-1) * K // N (contiguous racks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from typing import Any, Literal

IpipMode = Literal["Never", "CrossSubnet", "Always"]
UNDERLAYS = (IPv4Network("198.51.100.0/24"), IPv4Network("203.0.113.0/24"))
POOL_CIDR = IPv4Network("10.65.0.0/16")
MAX_SUBNETS = 8
MAX_NODES_PER_SUBNET = 61


class TopologyError(ValueError):
    """The requested lab cannot be built (names the argument)."""


@dataclass(frozen=True, slots=True)
class LabSpec:
    name: str = "tabby"
    nodes: int = 3
    subnets: int = 1
    ipip: IpipMode = "Never"
    workloads_per_node: int = 2
    as_number: int = 64512
    tor: str = ""  # "frr": an FRR router per rack instead of the shared router (lab.tor)


@dataclass(frozen=True, slots=True)
class Subnet:
    index: int
    cidr: str  # e.g. "198.51.100.0/26"
    router_address: str  # with prefix length
    bridge: str  # in the fabric namespace
    router_iface: str  # in the router namespace


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str  # node name (Node resource, felix/bgp node name)
    netns: str
    subnet: int
    address: str  # eth0 address with prefix length, e.g. "198.51.100.2/26"
    gateway: str  # router address on that subnet
    fabric_port: str  # veth end in the fabric namespace


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    name: str  # pod name
    node: str
    netns: str
    namespace: str  # Calico/Kubernetes namespace of the WorkloadEndpoint
    container_id: str


@dataclass(frozen=True, slots=True)
class Topology:
    spec: LabSpec
    ns_prefix: str
    fabric_netns: str
    router_netns: str
    subnets: tuple[Subnet, ...]
    nodes: tuple[NodePlan, ...]
    workloads: tuple[WorkloadPlan, ...] = field(default=())

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def all_netns(self) -> list[str]:
        """Every namespace of the lab, in creation order."""
        return [
            self.fabric_netns,
            self.router_netns,
            *(n.netns for n in self.nodes),
            *(w.netns for w in self.workloads),
        ]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Topology:
        return Topology(
            spec=LabSpec(**data["spec"]),
            ns_prefix=data["ns_prefix"],
            fabric_netns=data["fabric_netns"],
            router_netns=data["router_netns"],
            subnets=tuple(Subnet(**s) for s in data["subnets"]),
            nodes=tuple(NodePlan(**n) for n in data["nodes"]),
            workloads=tuple(WorkloadPlan(**w) for w in data["workloads"]),
        )


def _subnet_cidr(k: int) -> IPv4Network:
    underlay = UNDERLAYS[k // 4]
    return list(underlay.subnets(new_prefix=26))[k % 4]


def plan(spec: LabSpec) -> Topology:
    if not spec.name.isalnum() or len(spec.name) > 8:
        raise TopologyError(f"--name {spec.name!r}: use 1-8 letters or digits")
    if not 1 <= spec.subnets <= MAX_SUBNETS:
        raise TopologyError(f"--subnets {spec.subnets}: between 1 and {MAX_SUBNETS}")
    if spec.nodes < 1:
        raise TopologyError(f"--nodes {spec.nodes}: at least 1")
    if spec.subnets > spec.nodes:
        raise TopologyError(f"--subnets {spec.subnets}: more subnets than nodes ({spec.nodes})")
    if spec.workloads_per_node < 0:
        raise TopologyError("--workloads-per-node: not negative")
    if spec.tor not in ("", "frr"):
        raise TopologyError(f"--tor {spec.tor!r}: only frr")
    if spec.tor and spec.subnets >= MAX_SUBNETS:
        raise TopologyError(
            f"--tor: at most {MAX_SUBNETS - 1} subnets (the last /26 is the ToRs' transit)"
        )
    prefix = f"tl{spec.name}-"
    subnets = []
    for k in range(spec.subnets):
        cidr = _subnet_cidr(k)
        subnets.append(
            Subnet(
                index=k,
                cidr=str(cidr),
                router_address=f"{cidr.network_address + 1}/26",
                bridge=f"br{k}",
                router_iface=f"eth{k}",
            )
        )
    per_subnet: dict[int, int] = {}
    nodes = []
    for i in range(1, spec.nodes + 1):
        k = (i - 1) * spec.subnets // spec.nodes
        per_subnet[k] = per_subnet.get(k, 0) + 1
        if per_subnet[k] > MAX_NODES_PER_SUBNET:
            raise TopologyError(
                f"--nodes {spec.nodes}: more than {MAX_NODES_PER_SUBNET} nodes on one subnet; "
                "add subnets"
            )
        cidr = IPv4Network(subnets[k].cidr)
        addr = IPv4Interface(f"{cidr.network_address + 1 + per_subnet[k]}/26")
        nodes.append(
            NodePlan(
                name=f"node{i}",
                netns=f"{prefix}n{i}",
                subnet=k,
                address=str(addr),
                gateway=str(cidr.network_address + 1),
                fabric_port=f"n{i}",
            )
        )
    workloads = []
    for node in nodes:
        for j in range(1, spec.workloads_per_node + 1):
            pod = f"{node.name}-w{j}"
            workloads.append(
                WorkloadPlan(
                    name=pod,
                    node=node.name,
                    netns=f"{node.netns}-w{j}",
                    namespace="default",
                    container_id=f"{spec.name}-{pod}",
                )
            )
    return Topology(
        spec=spec,
        ns_prefix=prefix,
        fabric_netns=f"{prefix}fabric",
        router_netns=f"{prefix}router",
        subnets=tuple(subnets),
        nodes=tuple(nodes),
        workloads=tuple(workloads),
    )
