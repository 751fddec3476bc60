"""Unit tier of the phenotyping room: data layouts and their errors, crops, metrics by hand, the reference
method against a direct scikit-learn fit, folds and regimes, flags."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prompts.errors import UserError
from prompts.normalize import DEFAULT

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- a tiny hand-made data folder


def _disk(labels: np.ndarray, image: np.ndarray, label: int, y: int, x: int, r: int, level: int) -> None:
    yy, xx = np.mgrid[:labels.shape[0], :labels.shape[1]]
    inside = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    labels[inside] = label
    image[inside] = level


def _scene(cells: list[tuple[int, int, int, int]], size=64) -> tuple[np.ndarray, np.ndarray]:
    """cells: (y, x, r, level) -> (image uint8, labels uint16); labels 1..n in order."""
    rng = np.random.default_rng(len(cells))
    image = rng.integers(20, 30, (size, size)).astype(np.uint8)
    labels = np.zeros((size, size), np.uint16)
    for i, (y, x, r, level) in enumerate(cells, start=1):
        _disk(labels, image, i, y, x, r, level)
    return image, labels


def _save(folder: Path, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / name)
    Image.fromarray(labels).save(folder / "masks" / name)


SMALL, LARGE = (4, 200), (9, 90)  # (radius, level): "small" cells are small and bright, "large" ones large and dark


def _layout(root: Path, rows_override=None) -> Path:
    """mono/small, mono/large and co/ with 2 images: a.png (3 small, 1 large), b.png (0 small, 2 large)."""
    for t, (r, level) in (("small", SMALL), ("large", LARGE)):
        _save(root / "mono" / t, f"{t}.png", *_scene([(14, 14, r, level), (14, 46, r, level), (46, 30, r, level)]))
    _save(root / "co", "a.png", *_scene([(10, 10, *SMALL), (10, 50, *SMALL), (50, 10, *SMALL), (40, 40, *LARGE)]))
    _save(root / "co", "b.png", *_scene([(15, 15, *LARGE), (45, 45, *LARGE)]))
    rows = rows_override or [("images/a.png", 1, "small"), ("a.png", 2, "small"), ("a", 3, "small"), ("a", 4, "large"),
                             ("b.png", 1, "large"), ("b.png", 2, "large")]
    with open(root / "co" / "cell_types.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "type"])
        w.writerows(rows)
    return root


def test_read_data_types_each_cell_from_the_csv(tmp_path):
    from phenotype.data import CELLS, read_data

    data = read_data(_layout(tmp_path))
    assert data.types == ["large", "small"] and data.truth == CELLS
    assert sorted(im.name for im in data.mono) == ["mono/large/images/large.png", "mono/small/images/small.png"]
    co = {im.name: im for im in data.co}
    assert co["co/images/a.png"].cell_types == {1: "small", 2: "small", 3: "small", 4: "large"}
    assert co["co/images/b.png"].cell_types == {1: "large", 2: "large"}


@pytest.mark.parametrize("rows,needle", [
    ([("images/zz.png", 1, "small")], "unknown image 'images/zz.png'"),
    ([("a.png", 9, "small")], "label 9 is not in the mask of co/images/a.png"),
    ([("../../etc/a.png", 1, "small")], "escapes the data folder"),
    ([("a.png", 1, "small"), ("a.png", 1, "large")], "is both 'small' and 'large'"),
    ([("a.png", 1, "")], "empty type"),
])
def test_bad_cell_types_are_one_line_each(tmp_path, rows, needle):
    from phenotype.data import read_data

    with pytest.raises(UserError) as err:
        read_data(_layout(tmp_path, rows))
    assert needle in str(err.value)
    assert "without a type" in str(err.value)  # the cells the short CSV left untyped are named too


def test_two_truth_sources_or_none_is_refused(tmp_path):
    from phenotype.data import read_data

    root = _layout(tmp_path)
    (root / "co" / "points.csv").write_text("image,x,y,type\na.png,10,10,small\n")
    with pytest.raises(UserError, match="exactly one way"):
        read_data(root)
    (root / "co" / "points.csv").unlink()
    (root / "co" / "cell_types.csv").unlink()
    with pytest.raises(UserError, match="found none"):
        read_data(root)


def test_type_maps_give_each_cell_its_majority_type(tmp_path):
    from phenotype.data import read_data

    root = _layout(tmp_path)
    (root / "co" / "cell_types.csv").unlink()
    (root / "co" / "types.txt").write_text("small\nlarge\n")
    (root / "co" / "type_maps").mkdir()
    for name in ("a.png", "b.png"):
        labels = np.asarray(Image.open(root / "co" / "masks" / name))
        tmap = np.zeros_like(labels)
        for label in np.unique(labels[labels > 0]):
            tmap[labels == label] = 1 if (labels == label).sum() < 100 else 2  # small disks: 1, large: 2
        Image.fromarray(tmap).save(root / "co" / "type_maps" / name)
    co = {im.name: im for im in read_data(root).co}
    assert co["co/images/a.png"].cell_types == {1: "small", 2: "small", 3: "small", 4: "large"}


def test_points_count_only_and_refuse_training_regimes(tmp_path):
    from phenotype.cv import check_settings
    from phenotype.data import POINTS, read_data
    from prompts.schema.phenotype import PhenotypeSection

    root = _layout(tmp_path)
    (root / "co" / "cell_types.csv").unlink()
    (root / "co" / "points.csv").write_text("image,x,y,type,group\na.png,10,10,small,p1\na.png,40,40,large,p1\n"
                                           "b.png,15,15,large,p2\n")
    data = read_data(root)
    assert data.truth == POINTS and data.has_groups
    assert [p.type for p in {im.name: im for im in data.co}["co/images/a.png"].points] == ["small", "large"]
    with pytest.raises(UserError, match="points for counting alone"):
        check_settings(PhenotypeSection(), data)
    check_settings(PhenotypeSection(regimes=["zero-shot"], models=["reference"]), data)
    (root / "co" / "points.csv").write_text("image,x,y,type\na.png,999,10,small\n")
    with pytest.raises(UserError, match="lies outside"):
        read_data(root)


# --------------------------------------------------------------------------- crops


def test_crop_is_centred_and_zero_padded_at_the_border():
    from phenotype.cells import cells_of, crop_key, cut

    image, labels = _scene([(2, 2, 2, 200), (30, 30, 3, 150)])
    img = image[..., None]
    pixels, mask = cut(img, labels.astype(np.int32), 1, 2, 2, 10)
    assert pixels.shape == (10, 10, 1) and mask[5, 5] and not pixels[:3, :3].any()  # 3 rows/cols outside the image
    cs = cells_of("x", img, labels.astype(np.int32), {1: "a"}, 12)
    assert [(c.label, c.true_type) for c in cs.cells] == [(1, "a"), (2, None)]
    assert cs.cells[1].mask[6, 6] and cs.cells[1].pixels[6, 6, 0] == 150
    assert crop_key(pixels, mask) == crop_key(pixels.copy(), mask.copy()) != crop_key(pixels, ~mask)


# --------------------------------------------------------------------------- metrics by hand


def test_counts_and_proportion_errors_against_hand_values():
    from phenotype.metrics import count_metrics, counts

    types = ["a", "b"]
    true = np.stack([counts(["a", "a", "a", "b"], types), counts(["b"] * 4, types)])  # image 1: 3 a + 1 b; image 2: 4 b
    pred = np.stack([counts(["a", "a", "b", "b"], types), counts(["a", "b", "b", "b", None], types)])  # None: not counted
    assert true.tolist() == [[3, 1], [0, 4]] and pred.tolist() == [[2, 2], [1, 3]]
    m = count_metrics(true, pred)
    assert m["count_mae"] == pytest.approx(1.0)  # every |error| is 1 cell
    assert m["relative_count_error"] == pytest.approx(100 * (1 / 3 + 1 / 1 + 1 / 4) / 3)  # true 0 left out
    # proportions: (.75, .25) vs (.5, .5) and (0, 1) vs (.25, .75): every |difference| is 25 pp
    assert m["proportion_error"] == pytest.approx(25.0)


def test_cell_metrics_and_improvement_sign():
    from phenotype.metrics import cell_metrics, improvement

    m = cell_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert m["balanced_accuracy"] == pytest.approx(0.75) and m["confusion"] == [[1, 1], [0, 2]] and m["n_cells"] == 4
    assert improvement("proportion_error", 2.0, 5.0) == 3.0 and improvement("f1", 0.9, 0.8) == pytest.approx(0.1)


# --------------------------------------------------------------------------- the reference method


def test_reference_method_is_a_direct_random_forest_on_the_same_features(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    from phenotype import models as M
    from phenotype.cells import source_cells
    from phenotype.cv import fit_predict
    from phenotype.data import read_data
    from prompts.schema.phenotype import PhenotypeSection

    data = read_data(_layout(tmp_path))
    ph = PhenotypeSection(trees=25, crop_size=24)
    train = [c for im in data.mono for c in source_cells(im, ph.crop_size, "given", 0, 3, DEFAULT).cells]
    test = [c for im in data.co for c in source_cells(im, ph.crop_size, "given", 0, 3, DEFAULT).cells]
    cache = M.FeatureCache(tmp_path / "cache", M.reference_id())
    cache.add([c.key for c in train + test], np.stack([M.reference_features(c.pixels, c.mask) for c in train + test]))
    got = fit_predict(M.REFERENCE, train, test, cache, data.types, ph, seed=7)
    x = np.stack([M.reference_features(c.pixels, c.mask) for c in train])
    y = np.asarray([data.types.index(c.true_type) for c in train])
    direct = RandomForestClassifier(n_estimators=25, random_state=7, n_jobs=1).fit(x, y)
    xt = np.stack([M.reference_features(c.pixels, c.mask) for c in test])
    assert got == [data.types[i] for i in direct.predict(xt)]
    assert got == [c.true_type for c in test]  # small bright against large dark: no cell is wrong
    area = M.REFERENCE_NAMES.index("area")
    assert x[:, area].tolist() == [float(c.mask.sum()) for c in train]


def test_feature_cache_round_trip(tmp_path):
    from phenotype.models import FeatureCache

    c = FeatureCache(tmp_path, "x")
    c.add(["k1", "k2"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    c.save()
    again = FeatureCache(tmp_path, "x")
    assert again.missing(["k1", "k3"]) == ["k3"] and again.get(["k2"]).tolist() == [[3.0, 4.0]]


# --------------------------------------------------------------------------- folds and regimes


def test_regime_names_folds_and_annotated_images():
    from phenotype.regimes import annotated_images, check_k, make_folds, regime_names, training_images

    assert regime_names(["zero-shot", "retrained", "co-only"], [2, 1]) == ["zero-shot", "retrained-k1", "retrained-k2", "co-only"]
    with pytest.raises(UserError, match="synthetic"):
        regime_names(["nonsense"], [1])
    names = [f"co/{i}.png" for i in range(9)]
    groups = ["p1", "p1", "p1", "p2", "p2", "p2", "p3", "p3", "p3"]
    folds = make_folds(names, groups, 3, 2, 0)
    assert len(folds) == 6
    for f in folds:
        assert not set(f.train) & set(f.test)
        assert len({groups[names.index(n)] for n in f.test}) == 1  # a plate stays in one fold
    k1, k2 = annotated_images(folds[0], 1, 0), annotated_images(folds[0], 2, 0)
    assert k1 == k2[:1] and set(k2) <= set(folds[0].train)
    assert training_images("co-only", folds[0], 0) == list(folds[0].train) and training_images("zero-shot", folds[0], 0) == []
    with pytest.raises(UserError, match="use k <= 6"):
        check_k(folds, ["retrained-k7"])


# --------------------------------------------------------------------------- the command


def test_every_phenotype_key_is_a_flag(capsys):
    from phenotype.__main__ import main
    from prompts.schema import SECTIONS

    with pytest.raises(SystemExit):
        main(["cv", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(SECTIONS["phenotype"]):
        assert "--" + f.name.replace("_", "-") in text, f"no flag for phenotype.{f.name}"


def test_output_inside_the_data_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    from phenotype.__main__ import main

    root = _layout(tmp_path / "data")
    before = sorted(p for p in root.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--data", str(root), "--output", str(root / "out"), "--models", "reference"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "inside the data folder" in err[0]
    assert sorted(p for p in root.rglob("*")) == before


def test_bad_regime_and_baseline_are_one_line(tmp_path, capsys):
    from phenotype.__main__ import main

    root = _layout(tmp_path / "data")
    for args, needle in ((["--regimes", "zero-shot", "nonsense"], "--regimes nonsense"),
                         (["--baseline", "co-only", "--regimes", "zero-shot"], "--baseline co-only"),
                         (["--models", "svm"], "--models svm")):
        with pytest.raises(SystemExit) as exit_info:
            main(["cv", "--data", str(root), "--output", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_group_sub_folders_and_monocultures_without_masks(tmp_path):
    """co/<plate>/images + masks give the group key; mono/<type>/ with images alone gets cells from the classical floor."""
    from phenotype.cells import source_cells
    from phenotype.data import read_data

    root = tmp_path
    for t, (r, level) in (("small", SMALL), ("large", LARGE)):
        (root / "mono" / t).mkdir(parents=True)
        image, _ = _scene([(14, 14, r, level), (14, 46, r, level), (46, 30, r, level)])
        Image.fromarray(image).save(root / "mono" / t / f"{t}.png")
    _save(root / "co" / "plate1", "a.png", *_scene([(10, 10, *SMALL), (40, 40, *LARGE)]))
    _save(root / "co" / "plate2", "b.png", *_scene([(15, 15, *LARGE)]))
    (root / "co" / "cell_types.csv").write_text("image,label,type\nplate1/images/a.png,1,small\na,2,large\nb,1,large\n")
    data = read_data(root)
    assert {im.name: im.group for im in data.co} == {"co/plate1/images/a.png": "plate1", "co/plate2/images/b.png": "plate2"}
    assert data.has_groups and all(im.mask is None for im in data.mono)
    cells = source_cells({im.mono_type: im for im in data.mono}["large"], 32, "given", 10, 3, DEFAULT).cells
    assert len(cells) == 3 and {c.true_type for c in cells} == {"large"}
