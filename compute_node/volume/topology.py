"""The volume's layout: pages to protection groups, and PGs to storage nodes.

Sans-IO. A volume is an array of pages cut into protection groups (PGs) of
`pages_per_pg` contiguous pages each. Every PG has 6 replicas (segments) on 6
distinct storage nodes, 2 in each of 3 AZs, so that losing a whole AZ plus one
more node still leaves a read quorum (3/6), and losing one AZ leaves a write
quorum (4/6).

`placement` is the *initial* placement of a PG, computed from the node set alone
(no state), so any process that knows the cluster config computes the same one.
Once a PG's segments exist, their membership (which changes by membership epochs
when a node is replaced) is the truth, not this function: adding a node to the
config changes the placement of PGs created later, never of existing ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from borealis.errors import InvalidRequest
from borealis.ids import PgIndex, VolumeId
from storage_node.segment import Member

SEGMENTS_PER_PG = 6
AZS_PER_PG = 3
SEGMENTS_PER_AZ = SEGMENTS_PER_PG // AZS_PER_PG
WRITE_QUORUM = 4
READ_QUORUM = 3
# A write quorum and a read quorum always share a segment, and two write quorums too.
assert WRITE_QUORUM + READ_QUORUM > SEGMENTS_PER_PG
assert 2 * WRITE_QUORUM > SEGMENTS_PER_PG

PAGES_PER_PG_DEFAULT = 65536


class PlacementError(InvalidRequest):
    """The storage node set cannot hold a PG: fewer than 2 distinct nodes in 3 AZs."""


class Topology:
    """Pages to PGs, and the initial placement of each PG's 6 segments."""

    def __init__(
        self,
        volume_id: VolumeId,
        nodes: Iterable[Member],
        pages_per_pg: int = PAGES_PER_PG_DEFAULT,
    ) -> None:
        if pages_per_pg <= 0:
            raise InvalidRequest("pages_per_pg must be positive", pages_per_pg=pages_per_pg)
        if volume_id < 0:
            raise InvalidRequest("volume_id must not be negative", volume_id=volume_id)
        self.volume_id = volume_id
        self.pages_per_pg = pages_per_pg
        self.nodes: tuple[Member, ...] = tuple(sorted(nodes, key=lambda node: node.node))
        _check_distinct(self.nodes)
        by_az: dict[str, list[Member]] = {}
        for node in self.nodes:
            by_az.setdefault(node.az, []).append(node)
        # Only AZs that can hold both of a PG's segments in that AZ take part; a
        # lone node in a fourth AZ is left out rather than breaking "2 per AZ".
        self._azs: tuple[tuple[Member, ...], ...] = tuple(
            tuple(members)
            for _, members in sorted(by_az.items())
            if len(members) >= SEGMENTS_PER_AZ
        )
        if len(self._azs) < AZS_PER_PG:
            raise PlacementError(
                f"storage nodes must include at least {SEGMENTS_PER_AZ} distinct nodes "
                f"in each of {AZS_PER_PG} AZs",
                nodes_by_az={az: [node.node for node in members] for az, members in by_az.items()},
            )

    def replacing(self, old: str, new: Member) -> Topology:
        """The topology with storage node `old` replaced by `new`: PGs created from
        now on are placed on it (existing PGs change by membership epochs)."""
        nodes = [new if node.node == old else node for node in self.nodes]
        return Topology(self.volume_id, nodes, self.pages_per_pg)

    def pg_of(self, page: int) -> PgIndex:
        assert page >= 0, page
        return PgIndex(page // self.pages_per_pg)

    def first_page(self, pg: PgIndex) -> int:
        assert pg >= 0, pg
        return pg * self.pages_per_pg

    def pg_count_for(self, page_count: int) -> int:
        """The PGs a volume of `page_count` pages needs.

        At least one: PG 0 always exists because it carries the SIZE records, even
        for an empty volume.
        """
        assert page_count >= 0, page_count
        return max(1, -(-page_count // self.pages_per_pg))

    def placement(self, pg: PgIndex) -> list[Member]:
        """The 6 members of a new PG: 2 distinct nodes in each of 3 distinct AZs.

        PGs rotate over the eligible AZs (a window of 3 consecutive AZs starting at
        `pg mod AZ count`), and within an AZ over its nodes (the u-th PG that uses
        the AZ takes nodes 2u and 2u+1, modulo the AZ's node count). So every AZ
        serves 3 of each `AZ count` consecutive PGs and, within an AZ, the node
        loads of any prefix of PGs differ by at most one segment.
        """
        assert pg >= 0, pg
        az_count = len(self._azs)
        members: list[Member] = []
        for offset in range(AZS_PER_PG):
            az_index = (pg + offset) % az_count
            nodes = self._azs[az_index]
            use = _uses_before(az_index, pg, az_count)
            for slot in range(SEGMENTS_PER_AZ):
                members.append(nodes[(SEGMENTS_PER_AZ * use + slot) % len(nodes)])
        assert len({member.node for member in members}) == SEGMENTS_PER_PG, members
        return members

    def placement_names(self, pg: PgIndex) -> list[str]:
        return [member.node for member in self.placement(pg)]

    def __repr__(self) -> str:
        return (
            f"Topology(volume_id={self.volume_id}, pages_per_pg={self.pages_per_pg}, "
            f"nodes={[node.node for node in self.nodes]})"
        )


def _uses_before(az_index: int, pg: int, az_count: int) -> int:
    """How many PGs below `pg` include AZ `az_index` in their window of 3 AZs.

    PG q includes AZ i when (i - q) mod az_count < 3: each full cycle of az_count
    PGs uses every AZ 3 times, and the partial cycle is counted directly (it is
    shorter than the number of AZs, a handful).
    """
    cycles, rest = divmod(pg, az_count)
    partial = sum(1 for q in range(rest) if (az_index - q) % az_count < AZS_PER_PG)
    return AZS_PER_PG * cycles + partial


def _check_distinct(nodes: tuple[Member, ...]) -> None:
    names = Counter(node.node for node in nodes)
    addresses = Counter(node.address for node in nodes)
    for label, counts in (("names", names), ("addresses", addresses)):
        duplicates = sorted(value for value, count in counts.items() if count > 1)
        if duplicates:
            raise PlacementError(f"storage node {label} must be distinct", duplicates=duplicates)
