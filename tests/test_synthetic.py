"""The synthetic world: determinism, captions that match the pixels, the CSV schema."""

import csv
import filecmp

import numpy as np
import pytest

from opensora_lib.data import synthetic as syn
from opensora_lib.data.video_io import read_video

TINY = dict(seed=7, num_samples=24, still_fraction=0.25, min_frames=9, max_frames=17, max_duration=1.0)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    paths = syn.generate_dataset(out, TINY, progress=False)
    return out, paths, syn.read_csv(paths["meta"])


def test_same_params_give_identical_csv_and_frames(tiny_world, tmp_path):
    out, paths, rows = tiny_world
    again = syn.generate_dataset(tmp_path, TINY, progress=False)
    for name in ("meta", "train", "val"):
        assert filecmp.cmp(paths[name], again[name], shallow=False), name
    for row, row2 in zip(rows, syn.read_csv(again["meta"])):
        assert np.array_equal(read_video(row["path"]), read_video(row2["path"]))


def test_a_sample_depends_only_on_seed_and_index():
    small = syn.WorldParams(**{**TINY, "num_samples": 5})
    big = syn.WorldParams(**{**TINY, "num_samples": 50})
    assert syn.make_caption(syn.sample_spec(small, 3)) == syn.make_caption(syn.sample_spec(big, 3))
    other_seed = syn.WorldParams(**{**TINY, "seed": 8})
    captions = {syn.make_caption(syn.sample_spec(p, i)) for p in (small, other_seed) for i in range(5)}
    assert len(captions) == 10


def test_stored_frames_equal_the_rendered_frames(tiny_world):
    out, paths, rows = tiny_world
    for row in rows[:6]:
        spec = syn.sample_spec(syn.WorldParams(**TINY), int(row["id"]))
        assert np.array_equal(read_video(row["path"]), syn.render(spec))


def test_csv_has_the_opensora_columns_and_ground_truth(tiny_world):
    out, paths, rows = tiny_world
    with open(paths["meta"]) as f:
        header = next(csv.reader(f))
    assert header[:8] == ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution"]
    assert set(syn.TRUTH_COLUMNS) <= set(header)
    for row in rows:
        h, w, t = int(row["height"]), int(row["width"]), int(row["num_frames"])
        video = read_video(row["path"])
        assert video.shape == (t, h, w, 3)
        assert int(row["resolution"]) == h * w
        assert float(row["aspect_ratio"]) == pytest.approx(h / w, abs=1e-4)
        assert h % 8 == 0 and w % 8 == 0
        if row["kind"] == "image":
            assert t == 1 and int(row["fps"]) == syn.IMAGE_FPS and row["path"].endswith(".png")
        else:
            assert TINY["min_frames"] <= t <= TINY["max_frames"] and row["path"].endswith(".mp4")
    train, val = syn.read_csv(paths["train"]), syn.read_csv(paths["val"])
    assert len(train) + len(val) == len(rows)
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert {r["kind"] for r in rows} == {"image", "video"}


def test_captions_state_the_ground_truth(tiny_world):
    out, paths, rows = tiny_world
    for row in rows:
        parsed = syn.parse_caption(row["text"])
        objects = [(o["color"], o["shape"]) for o in parsed["objects"]]
        truth = [(row[f"obj{k}_color"], row[f"obj{k}_shape"]) for k in range(int(row["num_objects"]))]
        assert objects == truth, row["text"]
        if row["kind"] == "video":
            assert [o["motion"] for o in parsed["objects"]] == [
                row[f"obj{k}_motion"] for k in range(int(row["num_objects"]))]
            assert parsed["camera_motion"] == row["camera_motion"]
        assert row["bg_color"] in row["text"]


def test_every_object_is_visible_in_every_frame_in_its_colour(tiny_world):
    """Interior pixels carry the exact palette colour; each object stays in view for the whole clip."""
    out, paths, rows = tiny_world
    for row in rows:
        video = read_video(row["path"])
        for k in range(int(row["num_objects"])):
            colour = np.array(syn.PALETTE[row[f"obj{k}_color"]], np.uint8)
            per_frame = (video == colour).all(-1).sum(axis=(1, 2))
            assert per_frame.min() > 0, (row["text"], per_frame)


def test_objects_move_in_the_stated_direction():
    """With a static camera the colour centroid moves the way the caption says."""
    params = syn.WorldParams(seed=3, num_samples=200, still_fraction=0.0, min_frames=17, max_frames=17)
    checked = 0
    for i in range(params.num_samples):
        spec = syn.sample_spec(params, i)
        if spec.camera_motion != "static" or len(spec.objects) != 1 or spec.objects[0].motion == "static":
            continue
        obj = spec.objects[0]
        video = syn.render(spec)
        mask = (video == np.array(syn.PALETTE[obj.color], np.uint8)).all(-1)  # [T, H, W]
        ys, xs = np.nonzero(mask[0])
        ye, xe = np.nonzero(mask[-1])
        dx, dy = xe.mean() - xs.mean(), ye.mean() - ys.mean()
        expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[obj.motion]
        moved = np.array([dx, dy])
        assert np.sign(np.round(moved)).tolist() == list(expected), (syn.make_caption(spec), moved)
        assert np.linalg.norm(moved) == pytest.approx(obj.speed * 16, rel=0.25, abs=1.0)
        checked += 1
    assert checked >= 10


def test_camera_pan_moves_the_background_the_opposite_way():
    spec = syn.sample_spec(syn.WorldParams(seed=1, num_samples=1, still_fraction=0.0), 0)
    spec.background, spec.bg_color2, spec.objects = "checkered", "white", []
    spec.camera_motion, spec.camera_speed = "pan left", 2.0
    video = syn.render(spec).astype(np.float64)
    # frame 1 is frame 0 shifted right by 2 px ("pan left" = content flows right)
    assert np.abs(video[1][:, 2:] - video[0][:, :-2]).mean() < np.abs(video[1] - video[0]).mean() / 4


def test_unknown_or_invalid_params_are_named():
    with pytest.raises(ValueError, match="num_sampels"):
        syn.WorldParams.from_dict({"num_sampels": 3})
    with pytest.raises(ValueError, match="7:5"):
        syn.WorldParams(aspect_ratios="1:1,7:5")
    with pytest.raises(ValueError, match="min_frames"):
        syn.WorldParams(min_frames=20, max_frames=10)


def test_statistics_count_what_was_generated(tiny_world):
    out, paths, rows = tiny_world
    stats = syn.dataset_statistics(rows)
    assert stats["num_samples"] == TINY["num_samples"] == stats["num_videos"] + stats["num_images"]
    assert sum(stats["camera_motion"].values()) == stats["num_videos"]
    assert stats["total_frames"] == sum(int(r["num_frames"]) for r in rows)
    assert sum(stats["shapes"].values()) == sum(int(r["num_objects"]) for r in rows)


def test_object_radius_is_drawn_from_the_object_size_range():
    params = syn.WorldParams(**{**TINY, "object_size": "0.25,0.3"})
    fracs = [obj.size / min(spec.height, spec.width)
             for spec in (syn.sample_spec(params, i) for i in range(24)) for obj in spec.objects]
    assert min(fracs) >= 0.25 and max(fracs) <= 0.3
    assert max(fracs) - min(fracs) > 0.02  # drawn, not fixed
    default = syn.WorldParams()
    assert default.object_size == [0.2, 0.28]


@pytest.mark.parametrize("bad", ["0.3,0.2", "0,0.2", "0.2,0.6", "0.2"])
def test_an_impossible_object_size_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="object_size"):
        syn.WorldParams(object_size=bad)


def test_object_speed_is_drawn_from_its_range_and_named_in_the_caption():
    params = syn.WorldParams(**{**TINY, "still_fraction": 0.0, "object_speed": "1.0,1.5"})
    specs = [syn.sample_spec(params, i) for i in range(24)]
    speeds = [o.speed for s in specs for o in s.objects if o.motion != "static"]
    assert speeds and max(speeds) <= 1.5  # placement only ever slows an object down
    assert sum(v >= 1.0 for v in speeds) >= len(speeds) // 2  # most fit at their drawn speed
    for spec in specs:
        caption = syn.make_caption(spec)
        for o in spec.objects:
            if o.motion != "static":
                pace = "quickly" if o.speed >= syn.FAST_SPEED else "slowly"
                assert f"{o.color} {o.shape} moves {pace} {o.motion}" in caption


@pytest.mark.parametrize("bad", ["1.5,1.0", "0,1.0", "1.0"])
def test_an_impossible_object_speed_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="object_speed"):
        syn.WorldParams(object_speed=bad)


def test_the_first_named_object_is_drawn_in_front():
    params = syn.WorldParams(seed=3, num_samples=200, still_fraction=1.0, two_object_fraction=1.0)
    spec = syn.sample_spec(params, 0)
    first, second = spec.objects
    second.x0, second.y0 = first.x0, first.y0  # the second object exactly behind the first
    frame = syn.render(spec)[0]
    cy, cx = int(first.y0), int(first.x0)
    assert tuple(frame[cy, cx]) == tuple(syn.PALETTE[first.color])
    spec.objects = [second, first]  # swapped order: now the other one is in front
    assert tuple(syn.render(spec)[0][cy, cx]) == tuple(syn.PALETTE[second.color])


def test_heldout_captions_come_from_samples_the_dataset_never_rendered(tiny_world):
    """Eval prompts past the val split: video captions of ids >= num_samples, deterministic, none of them a row."""
    _, _, rows = tiny_world
    caps = syn.heldout_captions(TINY, 12)
    assert len(caps) == 12 and caps == syn.heldout_captions(TINY, 12)
    assert not set(caps) & {r["text"] for r in rows}
    assert not any(c.startswith("An image of") for c in caps)  # videos only
    world = syn.WorldParams.from_dict(TINY)
    first = next(i for i in range(TINY["num_samples"], TINY["num_samples"] + 50)
                 if syn.sample_spec(world, i).kind == "video")
    assert caps[0] == syn.make_caption(syn.sample_spec(world, first))


def test_middle_start_puts_each_mover_in_the_middle_of_its_axis_at_frame_0():
    """object_start="middle": a mover's centre is the view's middle along its axis of motion at frame 0 and stays in
    view to the end, and it is seen in every frame; a second mover on the same axis that finds no free place on the
    middle line starts as in the uniform world; static objects stay wholly inside as before."""
    params = syn.WorldParams(seed=5, num_samples=120, still_fraction=0.0, object_start="middle")
    movers, middles = 0, 0
    for i in range(params.num_samples):
        spec = syn.sample_spec(params, i)
        video = syn.render(spec)
        for k, obj in enumerate(spec.objects):
            u, v, r = spec.view_positions(obj)
            wholly_inside = (u - r >= 0).all() and (u + r <= spec.width).all() and (v - r >= 0).all() and (
                v + r <= spec.height).all()
            if obj.motion == "static":
                assert wholly_inside, syn.make_caption(spec)
                continue
            movers += 1
            along, size = (u, spec.width) if obj.motion in ("left", "right") else (v, spec.height)
            if along[0] == pytest.approx(size / 2):
                middles += 1
                assert (along >= 0).all() and (along <= size).all(), syn.make_caption(spec)
            else:  # the fallback: only a later object, and placed as the uniform world places it
                assert k > 0 and wholly_inside, syn.make_caption(spec)
            seen = (video == np.array(syn.PALETTE[obj.color], np.uint8)).all(-1).sum(axis=(1, 2))
            assert seen.min() > 0, (syn.make_caption(spec), seen)
    assert movers >= 80 and middles >= 0.8 * movers  # 102 of 120 here
    # the rendered first frame agrees for a lone mover on a static camera: its colour's centroid is mid-frame
    spec = next(s for s in (syn.sample_spec(params, i) for i in range(params.num_samples))
                if s.camera_motion == "static" and len(s.objects) == 1 and s.objects[0].motion in ("left", "right"))
    ys, xs = np.nonzero((syn.render(spec)[0] == np.array(syn.PALETTE[spec.objects[0].color], np.uint8)).all(-1))
    assert xs.mean() == pytest.approx(spec.width / 2 - 0.5, abs=1.5)


def test_middle_start_keeps_the_uniform_worlds_draws_but_the_start():
    """Only where movers start changes: split, size, shape, colour, motion and clip length are the uniform world's."""
    uniform = syn.WorldParams(seed=9, num_samples=40)
    middle = syn.WorldParams(seed=9, num_samples=40, object_start="middle")
    for i in range(40):
        a, b = syn.sample_spec(uniform, i), syn.sample_spec(middle, i)
        assert (a.split, a.num_frames, a.camera_motion, a.background) == (b.split, b.num_frames, b.camera_motion,
                                                                          b.background)
        assert [(o.shape, o.color, o.motion, o.size) for o in a.objects] == [
            (o.shape, o.color, o.motion, o.size) for o in b.objects]


def test_an_unknown_object_start_is_refused_by_name():
    with pytest.raises(ValueError, match="object_start"):
        syn.WorldParams(object_start="edge")
