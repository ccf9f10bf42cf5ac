"""The one L1 deadline rule (Tiers.deadline), without a server: no I/O happens here."""

from __future__ import annotations

import math

from dragonfly_cache import DragonflyConfig, L1Config
from dragonfly_cache._l2 import L2
from dragonfly_cache._tiers import Tiers


def make_tiers(*, ttl: float = 5.0, degraded_ttl: float = 1.0,
               invalidation: bool = False) -> Tiers:
    config = L1Config(ttl=ttl, degraded_ttl=degraded_ttl, invalidation=invalidation)
    return Tiers(config, L2(DragonflyConfig(mode="standalone"), ""), lambda: 1000.0)


def test_an_entry_lives_the_key_s_life_when_shorter_than_the_l1_ttl() -> None:
    tiers = make_tiers(ttl=5.0)
    assert tiers.deadline(1000.0, 0.5) == 1000.5  # the L2 key's remaining life


def test_an_entry_lives_at_most_the_l1_ttl() -> None:
    tiers = make_tiers(ttl=5.0)
    assert tiers.deadline(1000.0, 3600.0) == 1005.0
    assert tiers.deadline(1000.0, math.inf) == 1005.0  # a key with no expiry in L2
    assert tiers.deadline(1000.0) == 1005.0


def test_a_degraded_entry_lives_at_most_the_degraded_ttl() -> None:
    tiers = make_tiers(ttl=5.0, degraded_ttl=1.0)
    assert tiers.deadline(1000.0, 3600.0, degraded=True) == 1001.0
    assert tiers.deadline(1000.0, 0.25, degraded=True) == 1000.25  # the key's life if shorter
    assert make_tiers(ttl=0.5, degraded_ttl=1.0).deadline(1000.0, degraded=True) == 1000.5


def test_without_a_subscribed_listener_every_entry_is_degraded() -> None:
    tiers = make_tiers(ttl=5.0, degraded_ttl=1.0, invalidation=True)  # listener not started
    assert not tiers.trusted
    assert tiers.deadline(1000.0, 3600.0) == 1001.0
    assert make_tiers(invalidation=False).trusted  # coherence off: nothing to miss
