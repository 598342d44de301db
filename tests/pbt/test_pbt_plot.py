"""The schedule plot is a real PNG drawn from store rows, exploits included."""

from ganno_lightning.pbt.core import LineageEvent
from ganno_lightning.pbt.plot import plot_schedules


def test_plot_schedules_writes_a_png(tmp_path):
    schedule = [
        {"member": m, "step": s, "event": "report", "score": 1.0 / (s + m + 1), "hyperparameters": {"lr": 0.01 * (m + 1)}}
        for m in range(3)
        for s in (10, 20, 30)
    ]
    lineage = [LineageEvent(2, 20, 0, 20, 0.5, 0.1, {"lr": 0.03}, {"lr": 0.012})]
    schedule.append({"member": 2, "step": 20, "event": "exploit", "score": 0.1, "hyperparameters": {"lr": 0.012}})
    path = plot_schedules(schedule, lineage, tmp_path / "out" / "schedules.png", {"lr": True}, "val_loss")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["schedules.png"]  # no temporary file left
