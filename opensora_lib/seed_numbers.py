"""The seed report's numbers (Open-Sora 1.2, the released system at its scale), shown beside ours in the report.

One entry per number, each with its source. Two sources are used: this project's reference notes,
``/work/shared/reference/opensora-1.2-facts.md`` (cited as "facts §N"), and the seed report itself,
``docs/report_03.md`` of hpcaitech/Open-Sora (cited as "report_03, <section>"; the entry then carries in ``quote``
the table row it was read from, and a test checks every number of ``released`` occurs in that quote). A number
neither holds has ``released=None``: the report shows "—" and says so, rather than a number typed in from memory.

``ours`` names where our counterpart is read from, so the report never copies a number by hand:
- ``"metrics/<name>.json:<key>.<key>..."``: a value in a stage's metrics file (a dep of the report stage);
- ``"dvc.lock:<stage>:<key>.<key>..."``: a param as dvc.lock recorded it for the stage that produced the outputs.
``None``: no counterpart; ``ours_note`` then says why (shown in its place).
"""

from __future__ import annotations

from dataclasses import dataclass

FACTS = "opensora-1.2-facts.md"
NOT_IN_FACTS = "not in our reference notes (" + FACTS + "), so not shown"


@dataclass(frozen=True)
class SeedNumber:
    section: str  # opensora_lib.report.Section.key
    quantity: str
    released: str | None  # as the notes state it; None = not in the notes
    source: str
    ours: str | None = None
    ours_note: str = ""
    quote: str = ""  # for "report_03" sources: the seed report's table row holding the number
    percent: bool = False  # ours is a fraction: show it as a percentage, the seed's unit


SEED_NUMBERS: list[SeedNumber] = [
    # --- data ---------------------------------------------------------------------------------------------------
    SeedNumber("data", "training data, stage 1", "Webvid-10M", "facts §5 (Report: stage1 ... Webvid-10M)",
               "metrics/data.json:num_train", "train-split samples of the synthetic world (all stages)"),
    SeedNumber("data", "training data, stage 2", "Panda-70M, 20M subset (aes >= 4.5)", "facts §5"),
    SeedNumber("data", "training data, stage 3", "~2M high-quality clips", "facts §5"),
    SeedNumber("data", "pixel budgets", "144p (36,864 px) to 2048 (4,194,304 px)", "facts §9 (pixel budgets), §5",
               "metrics/data.json:resolutions"),
    SeedNumber("data", "total hours of training video", None, NOT_IN_FACTS,
               "metrics/data.json:duration_s.total", "seconds of synthetic video"),
    # --- data tools ---------------------------------------------------------------------------------------------
    SeedNumber("data_tools", "scene cut", "PySceneDetect AdaptiveDetector, adaptive_threshold 3.0", "facts §11",
               "dvc.lock:data_tools:data_tools.adaptive_threshold"),
    SeedNumber("data_tools", "clips with a camera-motion label", "13k (high confidence only)",
               "facts §11 (Report: only 13k clips labelled with high confidence)",
               "metrics/data_tools.json:run.clips_in_csv"),
    SeedNumber("data_tools", "motion score", "UniMatch mean |flow|, frames 0,10,20,30 at 320x576", "facts §11",
               "dvc.lock:data_tools:data_tools.flow_method"),
    SeedNumber("data_tools", "aesthetic score", "CLIP ViT-L/14 + MLP 768-1024-128-64-16-1, 3 frames", "facts §11",
               "metrics/data_tools.json:run.aes_column"),
    # --- vae -------------------------------------------------------------------------------------------------------
    SeedNumber("vae", "compression (time x height x width)", "4x8x8", "facts §2.1-2.2 (8x8 spatial, time factor 4)",
               "metrics/vae_eval.json:compression"),
    SeedNumber("vae", "2D VAE parameters (M)", "83.65", "facts §2.1", "metrics/vae_stage3.json:params_2d_M"),
    SeedNumber("vae", "temporal VAE parameters (M)", "309.69", "facts §2.1",
               "metrics/vae_stage3.json:params_temporal_M"),
    SeedNumber("vae", "stage 1 steps", "380k (8 GPUs)", "facts §7 (Report: 380k/260k/540k steps, 8/8/24 GPUs)",
               "metrics/vae_stage1.json:steps"),
    SeedNumber("vae", "stage 2 steps", "260k (8 GPUs)", "facts §7", "metrics/vae_stage2.json:steps"),
    SeedNumber("vae", "stage 3 steps", "540k (24 GPUs)", "facts §7", "metrics/vae_stage3.json:steps"),
    SeedNumber("vae", "SSIM (final VAE; ours: 17 frames of the val split)", "0.880",
               "report_03, Video compression network (their eval videos)", "metrics/vae_eval.json:final_ssim_17f",
               quote="| Open-Sora 1.2      | 0.880 | 30.590 |"),
    SeedNumber("vae", "PSNR, dB (final VAE; ours: 17 frames of the val split)", "30.590",
               "report_03, Video compression network (their eval videos)", "metrics/vae_eval.json:final_psnr_17f",
               quote="| Open-Sora 1.2      | 0.880 | 30.590 |"),
    # --- adaptation --------------------------------------------------------------------------------------------------
    *[SeedNumber("adapt", f"step {i}: {name}, steps", steps, "facts §6 (all steps on 8 GPUs)",
                 f"metrics/adapt_step{i}.json:train_steps")
      for i, (name, steps) in enumerate([
          ("multi-resolution images", "20k"), ("QK-norm", "18k"), ("rectified flow", "10k"),
          ("logit-normal + resolution-aware timesteps", "33k"), ("AdamW eps 1e-15", "8k"),
          ("new VAE + fps conditioning", "25k"), ("temporal blocks, images", "3k"),
          ("temporal blocks only, videos with masks", "38k")], start=1)],
    SeedNumber("adapt", "eval loss after each step", None, NOT_IN_FACTS, "metrics/adapt_step8.json:eval_loss",
               "step 8's eval loss"),
    # --- video training ---------------------------------------------------------------------------------------------
    SeedNumber("train", "STDiT3 parameters", "1,207,643,972 (STDiT3-XL/2)", "facts §1.1",
               "metrics/train_stage1.json:params"),
    SeedNumber("train", "processes (GPUs)", "12 nodes x 8 GPUs", "facts §5 (Report: 12 nodes x 8 GPUs)",
               "metrics/train_stage1.json:world_size"),
    SeedNumber("train", "stage 1 steps", "~30k", "facts §5", "metrics/train_stage1.json:steps"),
    SeedNumber("train", "stage 2 steps", "~23k", "facts §5", "metrics/train_stage2.json:steps"),
    SeedNumber("train", "stage 3 steps", "~15k", "facts §5", "metrics/train_stage3.json:steps"),
    SeedNumber("train", "learning rate", "1e-4 (constant after warmup)", "facts §5",
               "dvc.lock:video@1:train.common.lr"),
    SeedNumber("train", "AdamW eps", "1e-15", "facts §5", "dvc.lock:video@1:train.common.adam_eps"),
    SeedNumber("train", "EMA decay", "0.99", "facts §5", "dvc.lock:video@1:train.common.ema_decay"),
    SeedNumber("train", "stage-3 samples with conditioning frames", "25% (identity mask 0.75)", "facts §4.1",
               "metrics/train_stage3.json:masked_fraction",
               "single frames are never masked, so the share over all samples is lower"),
    # --- evaluation and sampling ------------------------------------------------------------------------------------
    SeedNumber("eval", "eval-loss timesteps", "10: 1000*k/11, k = 1..10", "facts §8",
               "metrics/eval.json:eval_timesteps"),
    SeedNumber("eval", "sampling steps", "30", "facts §3, §9", "dvc.lock:sample:sample.steps"),
    SeedNumber("eval", "classifier-free guidance scale", "7.0", "facts §3, §9", "dvc.lock:sample:sample.cfg"),
    SeedNumber("eval", "aesthetic score appended at inference", "6.5", "facts §9", "dvc.lock:sample:sample.aes"),
    SeedNumber("eval", "VBench total score (ours: ground-truth detector total, stage 3)", "79.23%",
               "report_03, Evaluation (240p, 2 s)", "metrics/eval.json:scores.stage3.total score",
               "no VBench here: our own detector scale",
               quote="| Open-Sora V1.2 | 79.23%      | 80.71%        | 73.30%         |", percent=True),
    SeedNumber("eval", "VBench quality score (ours: detector quality, stage 3)", "80.71%",
               "report_03, Evaluation (240p, 2 s)", "metrics/eval.json:scores.stage3.quality score",
               quote="| Open-Sora V1.2 | 79.23%      | 80.71%        | 73.30%         |", percent=True),
    SeedNumber("eval", "VBench semantic score (ours: detector semantic, stage 3)", "73.30%",
               "report_03, Evaluation (240p, 2 s)", "metrics/eval.json:scores.stage3.semantic score",
               quote="| Open-Sora V1.2 | 79.23%      | 80.71%        | 73.30%         |", percent=True),
    # --- sequence parallelism -----------------------------------------------------------------------------------------
    SeedNumber("sp", "split axis", "spatial tokens (Ulysses all-to-all); temporal blocks local", "facts §10"),
    SeedNumber("sp", "attention heads (divisible by the SP size)", "16", "facts §1.1, §10",
               "metrics/sequence_parallel.json:config.num_heads"),
    SeedNumber("sp", "time 1 GPU -> 2 GPUs with SP (720p, 16 s inference)", "547.97 s -> 244.38 s",
               "report_03, Sequence parallelism", "metrics/sequence_parallel.json:rows.p2_t1.speedup",
               "our speed-up factor, 2 CPU processes of 1 thread vs 1",
               quote="| 720p | 16s | 1 | No | 547.97 | - | ; | 720p | 16s | 2 | Yes | 244.38 | 12% |"),
]


def for_section(key: str) -> list[SeedNumber]:
    return [s for s in SEED_NUMBERS if s.section == key]
