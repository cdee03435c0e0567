"""`make demo` end to end, on a smaller budget than the real demo."""
import json


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    from eval.demo import main

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--steps", "4"]) == 0
    report = (out / "report.md").read_text()
    assert "| random (resnet18) |" in report and "| run/backbone.pt |" in report
    expr = json.loads((out / "reports" / "expressions" / "metrics.json").read_text())
    assert expr["classes"] == ["neutral", "smile", "surprise"]
    assert (out / "reports" / "expressions" / "gradcam.png").is_file()
    knn = json.loads((out / "reports" / "identities" / "metrics.json").read_text())
    assert all(r["fr_knn"]["people"] == 4 for r in knn["checkpoints"].values())
