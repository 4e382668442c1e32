"""The HTML report is self-contained and shows what the pipeline produced (and says what it did not)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from opensora_lib.data.video_io import write_video
from opensora_lib.report import MISSING, SECTIONS, bench_rows, build_report, lookup_ours, read_ceilings
from opensora_lib.seed_numbers import NOT_IN_FACTS, SEED_NUMBERS


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


# --- the seed's numbers beside ours ---------------------------------------------------------------------------

def _rows(page: str, section: str) -> dict[str, list[str]]:
    """The seed table of one section: {quantity: [released, ours, source]} as text."""
    body = page.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
    table = body.split('<table class="seed">', 1)[1].split("</table>", 1)[0]
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", table)[1:]:
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
        rows[cells[0]] = cells[1:]
    return rows


def test_seed_numbers_are_shown_beside_ours_with_their_source(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/vae_eval.json").write_text(json.dumps({"final_ssim_17f": 0.31238, "compression": "4x8x8"}))
    (tmp_path / "metrics/vae_stage1.json").write_text(json.dumps({"steps": 150}))
    (tmp_path / "metrics/train_stage1.json").write_text(json.dumps({"params": 17692480}))
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  video@1:\n    cmd: x\n    params:\n      params/train.yaml:\n"
        "        train.common:\n          lr: 0.0001\n          adam_eps: 1e-15\n")
    page = build_report(tmp_path, "reports/index.html").read_text()
    assert "released system, at its scale" in page

    vae = _rows(page, "vae")
    assert vae["stage 1 steps"][:2] == ["380k (8 GPUs)", "150 [metrics/vae_stage1.json:steps]"]
    assert vae["compression (time x height x width)"][:2] == ["4x8x8", "4x8x8 [metrics/vae_eval.json:compression]"]
    assert vae["2D VAE parameters (M)"][0] == "83.65"
    # a number read from the seed report itself (its table row is kept with it)
    ssim = vae["SSIM (final VAE; ours: 17 frames of the val split)"]
    assert ssim[0] == "0.880" and ssim[1].startswith("0.3124 ") and "report_03" in ssim[2]
    # a released number in neither source is a dash, and the row says why
    (tmp_path / "metrics/data.json").write_text(json.dumps({"duration_s": {"total": 321.5}}))
    data = _rows(build_report(tmp_path, "reports/index.html").read_text(), "data")
    assert data["total hours of training video"][0] == "—"
    assert "not in our reference notes" in data["total hours of training video"][2]
    # inputs the pipeline has not produced say so
    assert vae["temporal VAE parameters (M)"][1].startswith("not produced yet")

    train = _rows(page, "train")
    assert train["STDiT3 parameters"][:2] == ["1,207,643,972 (STDiT3-XL/2)",
                                              "17,692,480 [metrics/train_stage1.json:params]"]
    assert train["learning rate"][1] == "0.0001 [dvc.lock:video@1:train.common.lr]"  # params as dvc.lock recorded them
    assert train["AdamW eps"][:2] == ["1e-15", "1e-15 [dvc.lock:video@1:train.common.adam_eps]"]
    total = _rows(page, "eval")["VBench total score (ours: ground-truth detector total, stage 3)"]
    assert total[0] == "79.23%" and total[1].startswith("not produced yet")
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"scores": {"stage3": {"total score": 0.71694}}}))
    page = build_report(tmp_path, "reports/index.html").read_text()
    total = _rows(page, "eval")["VBench total score (ours: ground-truth detector total, stage 3)"]
    assert total[1].startswith("71.69% ")  # a fraction in metrics, shown in the seed's unit


def test_lookup_ours_reads_metrics_and_dvc_lock(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/x.json").write_text(json.dumps({"a": {"b": [1.5, 2.5]}}))
    lock = {"stages": {"s": {"params": {"p.yaml": {"top": {"k": 3}}}}}}
    assert lookup_ours("metrics/x.json:a.b.1", tmp_path, lock) == 2.5
    assert lookup_ours("dvc.lock:s:top.k", tmp_path, lock) == 3
    assert lookup_ours("metrics/x.json:a.c", tmp_path, lock) is MISSING
    assert lookup_ours("metrics/y.json:a", tmp_path, lock) is MISSING
    assert lookup_ours("dvc.lock:other:top.k", tmp_path, lock) is MISSING


def test_every_seed_number_has_a_section_and_a_source():
    keys = {s.key for s in SECTIONS}
    for n in SEED_NUMBERS:
        assert n.section in keys, n
        if n.released is None:
            assert n.source == NOT_IN_FACTS, n
        elif n.source.startswith("report_03"):
            assert n.quote, n  # the seed report's row it was read from
        else:
            assert n.source.startswith("facts §"), n
        if n.ours:
            assert re.fullmatch(r"metrics/\w+\.json:[\w. ]+|dvc\.lock:[\w@]+:[\w.]+", n.ours), n


FACTS_FILE = Path("/work/shared/reference/opensora-1.2-facts.md")


@pytest.mark.skipif(not FACTS_FILE.exists(), reason="the reference notes are not on this machine")
def test_every_released_number_appears_in_the_reference_notes():
    """No number typed in from memory: each number of each released value occurs in the facts file."""
    facts = FACTS_FILE.read_text().replace(",", "")
    for n in SEED_NUMBERS:
        where = n.quote.replace(",", "") if n.source.startswith("report_03") else facts
        for token in re.findall(r"\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?[kM]?", n.released or ""):
            assert token.replace(",", "") in where, (token, n)


# --- the benchmark board ----------------------------------------------------------------------------------------

BENCH = {
    "matmul": {"machine": {"threads": 2}, "what": "fp32 test", "gflop_per_s_by_threads": {"1": 50.0, "2": 80.0}},
    "vae": {"machine": {"threads": 2},
            "cases": {"small": {"encode": {"seconds_best": 0.2, "flops": 8e9, "threads": 2}}}},
    "stdit3": {"machine": {"threads": 2}, "threads": 1,
               "workloads": [{"name": "emb", "train": {"step_s": 0.8, "gflop": 30.0}}]},
    "data_tools": {"machine": {"threads": 2},
                   "workloads": {"embedded": {"clips": 60, "scan": {"seconds": 2.0, "clips_per_s": 30.0,
                                                                    "frames_per_s": 900.0}}}},
    "sp": {"machine": {"threads": 2},
           "table": [{"mode": "forward", "processes": 2, "threads_per_process": 4, "seconds": 2.1, "time_s": 2.5,
                      "gflop": 10.0}],
           "records": [{"step_s": 9.0}]},
}


def test_bench_rows_fraction_of_the_matmul_ceiling():
    ceilings = read_ceilings(BENCH["matmul"])
    assert ceilings == {1: 50.0, 2: 80.0}
    (vae,) = bench_rows("vae", BENCH["vae"], ceilings)
    assert (vae.workload, vae.time_key, vae.threads) == ("cases / small / encode", "seconds_best", 2)
    assert vae.gflop == 8.0 and vae.gflop_per_s == pytest.approx(40.0)  # 8 GFLOP / 0.2 s
    assert vae.ceiling_gflop_per_s == 80.0 and vae.fraction == pytest.approx(0.5)  # 40 / 80 at 2 threads

    (train,) = bench_rows("stdit3", BENCH["stdit3"], ceilings)  # threads inherited from the file's "threads": 1
    assert train.workload == "workloads / emb / train" and train.threads == 1
    assert train.gflop_per_s == pytest.approx(37.5) and train.fraction == pytest.approx(0.75)  # 30/0.8, /50

    (scan,) = bench_rows("data_tools", BENCH["data_tools"], ceilings)  # no FLOP count: time and rates only
    assert scan.workload == "workloads / embedded / scan" and scan.seconds == 2.0
    assert scan.rates == {"clips_per_s": 30.0, "frames_per_s": 900.0}
    assert scan.gflop_per_s is None and scan.fraction is None
    assert scan.threads == 2 and not scan.threads_recorded  # the machine's, marked as such

    (sp,) = bench_rows("sp", BENCH["sp"], ceilings)  # "records" are skipped; time_s wins over the clip's seconds
    assert sp.workload == "table / mode=forward, processes=2" and (sp.time_key, sp.seconds) == ("time_s", 2.5)
    assert sp.ceiling_gflop_per_s == 80.0 and sp.fraction == pytest.approx(0.05)  # 4 threads unmeasured: 2's
    assert bench_rows("stdit3", BENCH["stdit3"], {})[0].fraction is None  # no ceiling measured


def test_bench_board_in_the_report(tmp_path):
    bench = tmp_path / "reports/bench"
    bench.mkdir(parents=True)
    for name, data in BENCH.items():
        (bench / f"{name}.json").write_text(json.dumps(data))
    page = build_report(tmp_path, "reports/index.html").read_text()
    board = page.split('<section id="bench">', 1)[1]
    assert "1 thread: <b>50 GFLOP/s</b>, 2 threads: <b>80 GFLOP/s</b>" in board
    cells = {re.sub(r"<[^>]+>", "", tds[1]): [re.sub(r"<[^>]+>", "", c) for c in tds]
             for tds in (re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", board)) if tds}
    assert cells["cases / small / encode"][5:] == ["8", "40", "80", "0.500"]
    assert cells["workloads / emb / train"][5:] == ["30", "37.5", "50", "0.750"]
    assert cells["workloads / embedded / scan"][2:] == ["2*", "seconds = 2", "30 clips/s, 900 frames/s",
                                                       "—", "—", "—", "—"]
    (bench / "matmul.json").unlink()
    page = build_report(tmp_path, "reports/index.html").read_text()
    assert "No matmul ceiling" in page and "bench_matmul" in page


def test_committed_bench_files_yield_workloads():
    """Each benchmark file of this repository gives the board at least one workload (its schema is understood)."""
    bench_dir = Path(__file__).resolve().parents[1] / "reports" / "bench"
    files = [p for p in sorted(bench_dir.glob("*.json")) if p.stem != "matmul"]
    if not files:
        pytest.skip("no reports/bench/*.json (run `make bench`)")
    for path in files:
        assert bench_rows(path.stem, json.loads(path.read_text()), {}), path
    by_name = {p.stem: bench_rows(p.stem, json.loads(p.read_text()), {1: 1.0}) for p in files}
    for name in ("vae", "stdit3"):  # the benchmarks that count FLOPs
        if name in by_name:
            assert all(r.gflop for r in by_name[name]), name


def test_dvc_lock_is_read_as_yaml_1_2_so_ratios_stay_text(tmp_path):
    """An unquoted `aspect_ratio: 1:1` in dvc.lock is the text "1:1" (as DVC reads it), not base-60 61."""
    from opensora_lib.report import _read_lock

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  sample:\n    params:\n      p.yaml:\n"
                                       "        sample:\n          aspect_ratio: 1:1\n")
    lock = _read_lock(tmp_path / "dvc.lock")
    assert lookup_ours("dvc.lock:sample:sample.aspect_ratio", tmp_path, lock) == "1:1"


def test_adapt_chain_table_shows_each_step_and_the_change_from_step_1(tmp_path):
    from opensora_lib.report import adapt_chain_html

    (tmp_path / "metrics").mkdir()
    assert adapt_chain_html(tmp_path) == ""
    for name, score in [("adapt_step1", 0.50), ("adapt_step8", 0.425)]:
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(
            {"name": name, "train_steps": 20, "eval_loss": 0.5, "eval_loss_kind": "rf",
             "adherence": {"color": score, "shape": score, "score": score}}))
    page = adapt_chain_html(tmp_path)
    rows = re.findall(r"<tr>(.*?)</tr>", page)[1:]
    assert len(rows) == 2
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", rows[1])]
    assert cells[0] == "adapt_step8" and cells[-1] == "-7.5"  # (0.425 - 0.50) * 100 points


def test_markdown_tables_written_by_stages_become_html_tables():
    from opensora_lib.report import markdown_table_html

    page = markdown_table_html("intro\n| model | 17 frames SSIM / PSNR |\n|---|---|\n| stage 3 | 0.313 / 11.15 |\n")
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", page)]
    assert cells == ["model", "17 frames SSIM / PSNR", "stage 3", "0.313 / 11.15"]
    assert markdown_table_html("no table here") == ""
