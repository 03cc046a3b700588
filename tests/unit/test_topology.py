"""compute_node/volume/topology.py: pages to PGs, and the placement of PG segments."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borealis.errors import InvalidRequest
from borealis.ids import PgIndex, VolumeId
from compute_node.volume.topology import (
    AZS_PER_PG,
    SEGMENTS_PER_AZ,
    SEGMENTS_PER_PG,
    PlacementError,
    Topology,
)
from storage_node.segment import Member

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=150, deadline=None)


def nodes_in(counts_by_az: dict[str, int]) -> list[Member]:
    nodes: list[Member] = []
    for az, count in counts_by_az.items():
        for index in range(count):
            name = f"{az}-n{index}"
            nodes.append(Member(node=name, address=f"10.0.0.1:{len(nodes) + 7000}", az=az))
    return nodes


SIX = nodes_in({"az-a": 2, "az-b": 2, "az-c": 2})


def test_pages_map_to_contiguous_pgs() -> None:
    topology = Topology(VolumeId(1), SIX, pages_per_pg=4)
    assert [topology.pg_of(page) for page in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert [topology.first_page(PgIndex(pg)) for pg in range(3)] == [0, 4, 8]
    assert [topology.pg_count_for(count) for count in (0, 1, 4, 5, 8, 9)] == [1, 1, 1, 2, 2, 3]
    # Every page is in the PG whose range starts at or below it.
    for page in range(40):
        pg = topology.pg_of(page)
        assert topology.first_page(pg) <= page < topology.first_page(pg) + 4
        assert pg < topology.pg_count_for(page + 1)


def test_six_nodes_give_every_pg_all_six() -> None:
    topology = Topology(VolumeId(1), SIX, pages_per_pg=1)
    for pg in range(10):
        assert sorted(topology.placement_names(PgIndex(pg))) == sorted(n.node for n in SIX)


def test_bad_settings_and_node_sets_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="pages_per_pg"):
        Topology(VolumeId(1), SIX, pages_per_pg=0)
    with pytest.raises(PlacementError, match="2 distinct nodes in each of 3 AZs"):
        Topology(VolumeId(1), SIX[:5])
    with pytest.raises(PlacementError, match="3 AZs"):
        Topology(VolumeId(1), nodes_in({"az-a": 4, "az-b": 4}))
    with pytest.raises(PlacementError, match="names must be distinct"):
        Topology(VolumeId(1), [*SIX, Member(SIX[0].node, "10.9.9.9:1", "az-d")])
    with pytest.raises(PlacementError, match="addresses must be distinct"):
        Topology(VolumeId(1), [*SIX, Member("other", SIX[0].address, "az-a")])


def test_a_lone_node_in_a_fourth_az_is_left_out() -> None:
    nodes = [*SIX, Member("lonely", "10.9.9.9:1", "az-d")]
    topology = Topology(VolumeId(1), nodes, pages_per_pg=1)
    assert all("lonely" not in topology.placement_names(PgIndex(pg)) for pg in range(12))


node_sets = st.dictionaries(
    st.sampled_from(["az-a", "az-b", "az-c", "az-d", "az-e"]),
    st.integers(0, 5),
    min_size=1,
).map(nodes_in)


@SETTINGS
@given(node_sets, st.randoms(use_true_random=False))
def test_placement_over_any_node_set(nodes: list[Member], rng: random.Random) -> None:
    azs_usable = sorted(
        az for az, count in Counter(n.az for n in nodes).items() if count >= SEGMENTS_PER_AZ
    )
    if len(azs_usable) < AZS_PER_PG:
        with pytest.raises(PlacementError):
            Topology(VolumeId(3), nodes)
        return
    topology = Topology(VolumeId(3), nodes, pages_per_pg=2)
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    # Deterministic: the input order of the nodes does not matter.
    same = Topology(VolumeId(3), shuffled, pages_per_pg=2)
    az_of = {n.node: n.az for n in nodes}
    uses_by_node: Counter[str] = Counter()
    uses_by_az: Counter[str] = Counter()
    pg_count = 6 * len(azs_usable)
    for pg in range(pg_count):
        members = topology.placement(PgIndex(pg))
        assert members == same.placement(PgIndex(pg))
        assert set(members) <= set(nodes)
        assert len({m.node for m in members}) == SEGMENTS_PER_PG
        per_az = Counter(m.az for m in members)
        assert len(per_az) == AZS_PER_PG
        assert set(per_az.values()) == {SEGMENTS_PER_AZ}
        uses_by_node.update(m.node for m in members)
        uses_by_az.update(per_az.keys())
        # Spread: within each AZ, node loads of every prefix of PGs differ by at most one.
        for az in azs_usable:
            loads = [uses_by_node[n.node] for n in nodes if n.az == az]
            assert max(loads) - min(loads) <= 1, (az, loads)
        if (pg + 1) % len(azs_usable) == 0:
            # Over each full cycle every usable AZ serves the same number of PGs.
            assert {uses_by_az[az] for az in azs_usable} == {
                AZS_PER_PG * (pg + 1) // len(azs_usable)
            }
    assert set(az_of[name] for name in uses_by_node) == set(azs_usable)
