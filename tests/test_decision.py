"""Class-decision strategies: which passes a config asks for, and how their maps become scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffsegmenter import SegmenterConfig
from diffsegmenter.aggregation import split_where_and_which, upsample_scores
from diffsegmenter.decision import (
    PaperDecision,
    PassPlan,
    SecondPassDecision,
    SeparateWeightsDecision,
    class_decision,
)

WEIGHTS = {8: 1.0, 4: 1.0, 2: 0.0, 1: 0.0}


def test_the_config_picks_the_strategy_and_its_passes():
    paper = class_decision(SegmenterConfig(), 512)
    assert isinstance(paper, PaperDecision) and paper.passes() == [PassPlan(None, where=True)]
    one = class_decision(SegmenterConfig(class_level_weights=WEIGHTS), 512)
    assert type(one) is SeparateWeightsDecision
    assert one.passes() == [PassPlan(None, where=True, which_weights=WEIGHTS)]
    two = class_decision(SegmenterConfig(class_level_weights=WEIGHTS, class_resolution=64), 160)
    assert isinstance(two, SecondPassDecision)
    assert two.passes() == [PassPlan(None, where=True), PassPlan(64, where=False, which_weights=WEIGHTS)]
    # a class pass at the segmenter's own size is no second pass
    same = class_decision(SegmenterConfig(class_level_weights=WEIGHTS, class_resolution=64), 64)
    assert type(same) is SeparateWeightsDecision


def test_scores_paper_and_split():
    g = torch.Generator().manual_seed(0)
    where, which = torch.rand(3, 8, 8, generator=g), torch.rand(3, 4, 4, generator=g)
    assert torch.equal(PaperDecision().scores(where, None, (20, 30)), upsample_scores(where, (20, 30)))
    split = SeparateWeightsDecision(WEIGHTS).scores(where, which, (20, 30))
    up = F.interpolate(which[None], size=(20, 30), mode="bilinear", align_corners=False)[0]
    assert torch.equal(split, split_where_and_which(upsample_scores(where, (20, 30)), up))
    assert split.shape == (3, 20, 30) and float(split.min()) >= 0.0 and float(split.max()) <= 1.0 + 1e-6
