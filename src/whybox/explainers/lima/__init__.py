"""LIMA: submodular region-subset attribution (Chen et al., ICLR 2024; LiMA's bidirectional search).

``regions`` builds the partitions, ``objective`` the set function and the subset scorer, ``search`` the
searches (one function each, listed in ``SEARCHES``), ``explainer`` the registered ``lima`` explainer.
"""

from whybox.explainers.lima.explainer import Lima
from whybox.explainers.lima.objective import EngineScorer, Scored, SubsetScorer, Weights
from whybox.explainers.lima.regions import REGION_BUILDERS, RegionMap
from whybox.explainers.lima.search import SEARCHES, Search, SearchOptions, SearchResult

__all__ = [
    "REGION_BUILDERS",
    "SEARCHES",
    "EngineScorer",
    "Lima",
    "RegionMap",
    "Scored",
    "Search",
    "SearchOptions",
    "SearchResult",
    "SubsetScorer",
    "Weights",
]
