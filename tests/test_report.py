"""The HTML report is self-contained and shows what the pipeline produced (and says what it did not)."""

import json
import re

import numpy as np

from opensora_lib.data.video_io import write_video
from opensora_lib.report import SECTIONS, build_report


def test_report_inlines_figures_and_marks_missing_sections(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/data.json").write_text(json.dumps({"num_samples": 321, "sizes": {"48x48": 7}}))
    fig_dir = tmp_path / "reports/figures/data"
    write_video(fig_dir / "frame.png", np.full((1, 8, 8, 3), 200, np.uint8))
    write_video(fig_dir / "clip.mp4", np.zeros((3, 16, 16, 3), np.uint8), lossless=False)
    (tmp_path / "reports/bench").mkdir(parents=True)
    (tmp_path / "reports/bench/stdit3.json").write_text(json.dumps({"step_s": 0.5}))
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  data:\n    cmd: x\n    params:\n      params/data.yaml:\n        data:\n"
        "          seed: 11\n    deps:\n    - path: notebooks/00_data.ipynb\n      md5: abcdef0123456789\n")
    page = build_report(tmp_path, "reports/index.html").read_text()

    assert "321" in page and "sizes.48x48" in page
    assert page.count("data:image/png;base64,") == 1
    assert page.count("data:video/mp4;base64,") == 1
    assert "seed=11" in page and "abcdef0123" in page  # provenance from dvc.lock
    assert "step_s" in page
    assert not re.search(r"<script|https?://", page), "the report must open offline"
    # sections with no outputs yet say so rather than showing numbers
    assert page.count("Not produced by this pipeline yet") == len(SECTIONS) - 1
