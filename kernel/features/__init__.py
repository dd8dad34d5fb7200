"""Pure, incremental microstructure features (issue #8): see :mod:`.featureset`."""

from kernel.features.book import (
    imbalance,
    level_features,
    microprice,
    microprice_offset_bp,
    spread_bp,
    weighted_imbalance,
)
from kernel.features.ewma import EventRate, SignalEwma, decay
from kernel.features.featureset import (
    FeatureConfig,
    FeatureSample,
    FeatureSet,
    feature_names,
    window_label,
)
from kernel.features.flow import TradeFlow, WindowSums
from kernel.features.kyle import KyleLambda
from kernel.features.vpin import Vpin

__all__ = [
    "EventRate",
    "FeatureConfig",
    "FeatureSample",
    "FeatureSet",
    "KyleLambda",
    "SignalEwma",
    "TradeFlow",
    "Vpin",
    "WindowSums",
    "decay",
    "feature_names",
    "imbalance",
    "level_features",
    "microprice",
    "microprice_offset_bp",
    "spread_bp",
    "weighted_imbalance",
    "window_label",
]
