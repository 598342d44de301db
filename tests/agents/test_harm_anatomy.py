import json

from helpers import benchmark_module


def _results():
    """Three runs of one condition: harmed after cutting its LRs, harmed on a solved task, not harmed after raising."""
    def seed(agent, constant, nudged, run):
        return {"methods": {"agent": {"final_val_loss": agent, "run": f"a{run}"},
                            "constant@init": {"final_val_loss": constant, "run": f"c{run}"},
                            "constant@init_x1.03": {"final_val_loss": nudged}}}
    runs = [{"id": "a0", "schedule": {"scales": [[0.5, 0.5], [0.25, 0.5]]}},   # cut: mean log2 -1.25
            {"id": "a1", "schedule": {"scales": [[1.0, 1.0]]}},                 # stayed at x1
            {"id": "a2", "schedule": {"scales": [[2.0, 4.0]]}}]                 # raised: mean log2 1.5
    runs += [{"id": f"c{i}", "initial_val_loss": 2.0} for i in range(3)]
    comparisons = {"init_lr_x1": {
        "cnn_digits#0": {"seeds": {"0": seed(0.5, 0.4, 0.45, 0)}},    # 25% worse; a 3% nudge alone moves it 12%
        "sequence#1": {"seeds": {"0": seed(6e-4, 2e-4, 2e-4, 1)}},    # 3x "worse", both below 1e-3 x 2.0: solved
        "mlp_digits#2": {"seeds": {"0": seed(0.3, 0.4, 0.401, 2)}},   # better
    }}
    return {"runs": runs, "comparisons": comparisons}


def test_harmed_runs_are_split_by_direction_sensitivity_solved_and_family(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(_results()))
    with benchmark_module("harm_anatomy") as anatomy:
        anatomy.main(["--out", str(tmp_path / "anatomy.md"), f"shipped={folder}"])
    text = (tmp_path / "anatomy.md").read_text()
    # harmed: 2 runs, 0 raised, 1 cut, 1 near x1, 1 sensitive (the CNN's 12%), median change (12% + 0%) / 2, 1 solved
    assert "| shipped: harmed | 2 | 0 | 1 | 1 | 1 | 6.1% | 1 |" in text
    assert "| shipped: not harmed | 1 | 1 | 0 | 0 | 0 | 0.2% | 0 |" in text
    assert "| cnn_digits | sequence |" in text and "| shipped | 1 | 1 |" in text
