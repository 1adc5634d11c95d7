"""Random allocations for the additivity analysis, and its tool."""
import json
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import QUICK_CENTERPOINT, load_tool
from rdprune_mm.additivity import (AdditivitySample, measure_allocation,
                                   random_levels, summarize)
from rdprune_mm.targets import find_targets


@pytest.mark.parametrize('budget', [0.2, 0.5, 0.9])
def test_random_levels_meet_the_budget_and_vary(budget):
    rng = np.random.default_rng(0)
    costs = [np.linspace(n, 0, 6) for n in (100, 250, 40, 900)]
    total = sum(c[0] for c in costs)
    draws = [random_levels(costs, budget, rng) for _ in range(20)]
    for levels in draws:
        kept = sum(c[level] for c, level in zip(costs, levels))
        assert kept <= budget * total
        assert all(0 <= level < len(c) for c, level in zip(costs, levels))
    assert len({tuple(levels) for levels in draws}) > 1


def test_summary_of_additive_samples():
    samples = [
        AdditivitySample(budget=0.5, kept_share=0.5, predicted=p, measured=p)
        for p in (0.1, 0.3, 2.0)
    ]
    summary = summarize(samples)
    assert summary['spearman'] == pytest.approx(1.0)
    assert summary['pearson_log'] == pytest.approx(1.0)
    assert summary['ratio_median'] == summary['ratio_max'] == 1.0


def test_measure_allocation_restores_the_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    targets = find_targets(model)
    before = [t.weight.detach().clone() for t in targets]
    seen = []

    def measure():
        seen.append([int((t.weight == 0).sum()) for t in targets])
        return 1.0

    counts = [np.array([0, 8, 16]), np.array([0, 4, 8])]
    assert measure_allocation(targets, counts, [2, 1], measure) == 1.0
    assert seen == [[16, 4]]
    for target, weight in zip(targets, before):
        assert torch.equal(target.weight, weight)


def test_tool_writes_report_and_plot(tmp_path, capsys):
    argv = [QUICK_CENTERPOINT, '--work-dir', str(tmp_path), '--budgets',
            '0.5', '--samples', '3', '--cfg-options', 'pruner.num_levels=3',
            'pruner.targets.include=[pts_neck,task_heads.0.reg]']
    assert load_tool('analyze_additivity').main(argv) == 0
    with open(osp.join(tmp_path, 'additivity.json')) as f:
        report = json.load(f)
    assert report['samples'] == len(report['points']) == 3
    for point in report['points']:
        assert point['kept_share'] <= 0.5
        assert point['ratio'] == pytest.approx(
            point['measured'] / point['predicted'])
    assert osp.getsize(osp.join(tmp_path, 'additivity.png')) > 10_000
    assert 'Spearman' in capsys.readouterr().out


def test_tool_rejects_bad_budgets(tmp_path, capsys):
    argv = [QUICK_CENTERPOINT, '--budgets', '1.5']
    assert load_tool('analyze_additivity').main(argv) == 2
    assert '(0, 1]' in capsys.readouterr().err
