"""Importers: WorldCereal long / wide parquet and generic tables (CSV, TSV, Parquet; wide and long)
into datasets — on tiny tables built here, and on the real WorldCereal files (``realdata``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.class_table import ClassTable
from cropstar.data.dataset import PatchSequenceDataset, open_dataset
from cropstar.data.importers import fill_gaps, import_table, import_ucr, import_worldcereal
from cropstar.errors import DataError, InputError

S2 = ["B02", "B03", "B04", "B08", "B11", "B12"]
DATES = pd.to_datetime(["2023-01-01", "2023-01-11", "2023-01-21", "2023-02-01", "2023-02-11"])
REF = "2023_FRA_LPIS_POLY_110"
LEGEND = (
    "ewoc_code;level_1;label_full\n11-01-06-000-0;temporary_crops;maize\n"
    "11-01-01-001-1;temporary_crops;winter_common_soft_wheat\n20-01-02-002-2;grass;longterm_meadows\n"
)


def _worldcereal_long(tmp_path: Path) -> tuple[Path, Path]:
    """8 parcels: maize ×3, wheat ×3, meadows ×1, an unknown code ×1; parcel 4 has no valid step,
    parcel 1 lacks two rows and is cloudy on one date; B8A is all no-data as upstream."""
    codes = [1101060000, 1101060000, 1101060000, 1101010011, 1101010011, 1101010011, 2001020022, 999]
    rows = []
    for parcel, code in enumerate(codes):
        for t, date in enumerate(DATES):
            if parcel == 1 and t in (0, 3):
                continue  # absent rows
            row = {
                "sample_id": f"{REF}_{100 + parcel}",
                "ref_id": REF,
                "timestamp": date,
                "ewoc_code": code,
                "S1-SIGMA0-VV": 4000,
                "S2-L2A-B8A": 65535,
                "lat": 45.0,
            }
            for b, band in enumerate(S2):
                row[f"S2-L2A-{band}"] = 1000 * (b + 1) + 10 * t + parcel
            if parcel == 4 or (parcel == 1 and t == 2):
                row["S2-L2A-B04"] = 65535  # cloud
            rows.append(row)
    df = pd.DataFrame(rows)
    for band in S2:
        df[f"S2-L2A-{band}"] = df[f"S2-L2A-{band}"].astype(np.uint16)
    df = df.sample(frac=1.0, random_state=1)  # row order must not matter
    parquet = tmp_path / "extraction.geoparquet"
    df.to_parquet(parquet)
    legend = tmp_path / "legend.csv"
    legend.write_text("\ufeff" + LEGEND, encoding="utf-8")
    return parquet, legend


def test_worldcereal_long_import(tmp_path: Path) -> None:
    parquet, legend = _worldcereal_long(tmp_path)
    report = import_worldcereal(parquet, tmp_path / "ds", legend=legend, shard_size=3)
    reader = open_dataset(tmp_path / "ds")
    assert reader.shape == (6, 5, 6, 1, 1) and report.shape == (6, 5, 6, 1, 1)
    assert reader.dates == [str(d.date()) for d in DATES] and reader.bands == S2
    assert reader.class_table.to_records() == [
        {"id": 0, "code": "1101010011", "name": "winter_common_soft_wheat"},
        {"id": 1, "code": "1101060000", "name": "maize"},
        {"id": 2, "code": "2001020022", "name": "longterm_meadows"},
    ]
    fields = list(reader.read("field_ids"))
    assert fields == ["100", "101", "102", "103", "105", "106"]  # parcel ids, sorted by sample id
    skipped = {s.sample_id: s for s in report.skipped}
    assert set(skipped) == {f"{REF}_104", f"{REF}_107"}
    assert "no valid observation" in skipped[f"{REF}_104"].reason and skipped[f"{REF}_104"].field_id == "104"
    assert "class code 999 not in the legend" in skipped[f"{REF}_107"].reason
    patches = reader.read("patches")[..., 0, 0]
    mask = reader.read("mask")
    row = fields.index("101")
    np.testing.assert_array_equal(mask[row], [False, True, False, False, True])
    np.testing.assert_array_equal(mask[fields.index("100")], True)
    observed = {t: np.array([1000 * (b + 1) + 10 * t + 1 for b in range(6)]) / 1e4 for t in (1, 4)}
    np.testing.assert_allclose(patches[row, 1], observed[1], rtol=1e-6)  # DN / 10000
    np.testing.assert_allclose(patches[row, 0], observed[1], rtol=1e-6)  # edge: nearest
    day = (DATES - DATES[1]).days.to_numpy()
    for t in (2, 3):  # linear in time (days) between the valid steps 1 and 4
        w = day[t] / day[4]
        np.testing.assert_allclose(patches[row, t], observed[1] * (1 - w) + observed[4] * w, rtol=1e-5)
    np.testing.assert_array_equal(reader.read("n_valid_obs")[row], 2)
    assert report.valid_fraction == pytest.approx(mask.mean())
    assert reader.provenance["importer"] == "worldcereal" and "DN / 10000" in reader.provenance["radiometry"]
    assert reader.validate() == []


def test_worldcereal_min_samples_unknown_codes_and_bands(tmp_path: Path) -> None:
    parquet, legend = _worldcereal_long(tmp_path)
    report = import_worldcereal(parquet, tmp_path / "a", legend=legend, min_samples=2)
    assert [d["name"] for d in report.dropped_classes] == ["longterm_meadows"]
    assert open_dataset(tmp_path / "a").class_table.names == ["winter_common_soft_wheat", "maize"]
    with pytest.raises(DataError, match="class code\\(s\\) 999 not in the legend.*field 107"):
        import_worldcereal(parquet, tmp_path / "b", legend=legend, unknown_codes="error")
    kept = import_worldcereal(parquet, tmp_path / "c", legend=legend, unknown_codes="keep")
    assert "999" in kept.class_table.names
    with pytest.raises(DataError, match="B8A holds no data"):
        import_worldcereal(parquet, tmp_path / "d", bands=["B02", "B8A"])
    with pytest.raises(DataError, match="no column for B05"):
        import_worldcereal(parquet, tmp_path / "e", bands=["B02", "B05"])
    fixed = ClassTable.from_codes([1101060000, 5], {"1101060000": "maize"})
    report = import_worldcereal(parquet, tmp_path / "f", class_table=fixed, bands=["blue", "nir"])
    assert open_dataset(tmp_path / "f").class_table == fixed and report.bands == ["B02", "B08"]
    assert sum(s.reason.endswith("not in the class table") for s in report.skipped) == 5  # B04 clouds unused
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_worldcereal_wide_import(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, t = 12, 4
    df = pd.DataFrame(
        {
            "sample_id": [f"2017_UGA_X_POLY_111_{i}" for i in range(n)],
            "ref_id": ["2017_UGA_X_POLY_111"] * 6 + ["2017_SSD_Y_POINT_100"] * 6,
            "ewoc_code": [1101060000] * 6 + [1101070000] * 6,
            "start_date": "2016-12-01",
        }
    )
    df["sample_id"] = [f"{r}_{i}" for i, r in enumerate(df["ref_id"])]
    for band, res in (
        *((b, 10) for b in ("B02", "B03", "B04", "B08")),
        ("B11", 20),
        ("B12", 20),
        ("B8A", 20),
    ):
        for step in range(t):
            df[f"OPTICAL-{band}-ts{step}-{res}m"] = rng.integers(100, 5000, n).astype(np.uint16)
    df["SAR-VH-ts0-20m"] = 1
    df.loc[0, "OPTICAL-B03-ts2-10m"] = 65535
    df.to_parquet(tmp_path / "wide.parquet")
    report = import_worldcereal(tmp_path / "wide.parquet", tmp_path / "ds")
    reader = open_dataset(tmp_path / "ds")
    assert reader.shape == (n, t, 6, 1, 1) and report.dates == [
        "2016-12-01",
        "2017-01-01",
        "2017-02-01",
        "2017-03-01",
    ]
    assert reader.read("mask")[0].tolist() == [True, True, False, True]
    assert reader.read("field_ids")[0] == "2017_UGA_X_POLY_111/0"  # several collections: prefixed
    np.testing.assert_allclose(
        reader.read("patches")[1, 3, 5, 0, 0], df.loc[1, "OPTICAL-B12-ts3-20m"] / 1e4, rtol=1e-6
    )


def test_table_wide_csv_tsv_parquet(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n, t = 30, 3
    table = pd.DataFrame(
        {"crop": rng.choice(["BTH", "MIS", "PPH"], n), "parcel_id": [f"p{i // 3}" for i in range(n)]}
    )
    for band in ("blue", "green", "red", "nir", "swir16", "swir22"):
        for step in range(t):
            table[f"{band}_{step}"] = rng.random(n).round(4)
    table["ndvi_0"] = 0.5
    table.loc[4, "red_1"] = np.nan
    for name, write in (
        ("t.csv", lambda p: table.to_csv(p, index=False)),
        ("t.tsv", lambda p: table.to_csv(p, index=False, sep="\t")),
        ("t-semicolon.csv", lambda p: table.to_csv(p, index=False, sep=";")),
        ("t.parquet", lambda p: table.to_parquet(p)),
    ):
        write(tmp_path / name)
        report = import_table(
            tmp_path / name,
            tmp_path / f"ds-{name}",
            label_column="crop",
            start_date="2023-04-01",
            freq="10D",
            seed=1,
        )
        reader = open_dataset(tmp_path / f"ds-{name}")
        assert reader.shape == (n, t, 6, 1, 1) and reader.dates == ["2023-04-01", "2023-04-11", "2023-04-21"]
        assert reader.class_table.codes == ["BTH", "MIS", "PPH"]
        np.testing.assert_allclose(reader.read("patches")[0, 2, 3, 0, 0], table.loc[0, "nir_2"], rtol=1e-6)
        assert not reader.read("mask")[4, 1] and reader.read("mask").sum() == n * t - 1
        assert any("ndvi" in note for note in report.notes)
        split, fields = reader.read("split"), reader.read("field_ids")
        for field in set(fields):
            assert len(set(split[fields == field])) == 1


def test_table_wide_ts_names_dn_scale_and_dates(tmp_path: Path) -> None:
    table = pd.DataFrame({"label": [1, 2, 1, 2], "start_date": "2021-01-01"})
    for band in S2:
        for step in range(2):
            table[f"{band}-ts{step}"] = [1000, 2000, 65535, 1500]
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    report = import_table(path, tmp_path / "ds", label_column="label", nodata=65535)
    assert report.dates == ["2021-01-01", "2021-02-01"] and len(report.skipped) == 1
    assert "no valid observation" in report.skipped[0].reason and report.skipped[0].sample_id == "2"
    assert any("digital numbers" in note for note in report.notes)
    np.testing.assert_allclose(open_dataset(tmp_path / "ds").read("patches")[0, 0, 0, 0, 0], 0.1)
    import_table(
        path,
        tmp_path / "explicit",
        label_column="label",
        nodata=65535,
        scale=1.0,
        dates=["2021-03-01", "2021-03-20"],
    )
    reader = open_dataset(tmp_path / "explicit")
    assert reader.dates == ["2021-03-01", "2021-03-20"] and reader.read("patches")[0, 0, 0, 0, 0] == 1000


def test_table_long_layout_and_per_timestep(tmp_path: Path) -> None:
    rows = []
    for sample in range(6):
        for t, date in enumerate(["2022-05-01", "2022-05-11", "2022-05-21"]):
            if sample == 2 and t == 1:
                continue
            rows.append(
                {
                    "id": f"s{sample}",
                    "field_id": f"f{sample // 2}",
                    "date": date,
                    "class": "bare" if t == 0 and sample < 2 else ["a", "b", "a", "b", "a", "b"][sample],
                    **{band: 0.1 * (sample + 1) + 0.01 * t for band in S2},
                }
            )
    path = tmp_path / "long.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    report = import_table(path, tmp_path / "seq", label_column="class")
    assert [s.sample_id for s in report.skipped] == ["s0", "s1"] and "labels differ" in report.skipped[
        0
    ].reason
    assert report.shape == (4, 3, 6, 1, 1)
    report = import_table(path, tmp_path / "ts", label_column="class", task="per_timestep")
    reader = open_dataset(tmp_path / "ts")
    assert reader.task == "per_timestep" and reader.shape == (6, 3, 6, 1, 1)
    assert reader.class_table.codes == ["a", "b", "bare"]
    labels = reader.read("labels")
    assert labels[0].tolist() == [2, 0, 0] and labels[2].tolist() == [0, -1, 0]  # absent row: ignored
    assert reader.read("field_ids").tolist() == ["f0", "f0", "f1", "f1", "f2", "f2"]
    np.testing.assert_allclose(reader.read("patches")[2, 1, :, 0, 0], 0.3 + 0.01, rtol=1e-5)  # filled
    _, mask, label = PatchSequenceDataset(tmp_path / "ts", None)[2]
    assert label.shape == (3,) and mask.tolist() == [True, False, True]


def test_table_errors_name_the_file_column_band(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"not a parquet file")
    with pytest.raises(InputError, match="cannot read .*broken.parquet"):
        import_table(garbage, tmp_path / "ds", label_column="c")
    with pytest.raises(InputError, match="file not found"):
        import_table(tmp_path / "absent.csv", tmp_path / "ds", label_column="c")
    wide = pd.DataFrame({"c": [1], **{f"{b}_{t}": [0.1] for b in S2 for t in range(2)}})
    wide.to_csv(tmp_path / "w.csv", index=False)
    with pytest.raises(InputError, match="no label column 'crop'"):
        import_table(tmp_path / "w.csv", tmp_path / "ds", label_column="crop")
    with pytest.raises(InputError, match="without dates"):
        import_table(tmp_path / "w.csv", tmp_path / "ds", label_column="c")
    wide.drop(columns="B11_1").to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(DataError, match="B11 has no column for time step\\(s\\) 1"):
        import_table(tmp_path / "gap.csv", tmp_path / "ds", label_column="c", start_date="2020-01-01")
    with pytest.raises(DataError, match="no wide columns .* for B05"):
        import_table(
            tmp_path / "w.csv", tmp_path / "ds", label_column="c", bands=["B05"], start_date="2020-01-01"
        )
    with pytest.raises(InputError, match="sum to 1"):
        import_table(
            tmp_path / "w.csv",
            tmp_path / "ds",
            label_column="c",
            start_date="2020-01-01",
            fractions=(0.5, 0.1, 0.1),
        )
    wide.astype(object).assign(B03_1="cloudy").to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(DataError, match="column 'B03_1' holds non-numeric values, e.g. 'cloudy'"):
        import_table(tmp_path / "text.csv", tmp_path / "ds", label_column="c", start_date="2020-01-01")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(InputError, match="unknown table format"):
        import_table(tmp_path / "w.txt", tmp_path / "ds", label_column="c")
    assert not (tmp_path / "ds").exists()


def test_fill_gaps_matches_numpy_interp() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((50, 9, 2)).astype(np.float32)
    valid = rng.random((50, 9)) > 0.5
    valid[0] = False
    days = np.cumsum(rng.integers(1, 20, 9))
    filled = fill_gaps(values, valid, days)
    assert np.isnan(filled[0]).all()
    for row in range(1, 50):
        if not valid[row].any():
            continue
        for band in range(2):
            expected = np.interp(days, days[valid[row]], values[row, valid[row], band])
            np.testing.assert_allclose(filled[row, :, band], expected, rtol=1e-5)


def test_cli_import_worldcereal_and_table(tmp_path: Path) -> None:
    parquet, legend = _worldcereal_long(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "import",
            "worldcereal",
            str(parquet),
            "--legend",
            str(legend),
            "--out",
            str(tmp_path / "ds"),
            "--min-samples",
            "2",
            "--shard-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "longterm_meadows" in result.output
    result = runner.invoke(app, ["dataset", "info", str(tmp_path / "ds"), "--json"])
    summary = json.loads(result.stdout)
    assert summary["shape"] == [5, 5, 6, 1, 1] and [c["name"] for c in summary["classes"]] == [
        "winter_common_soft_wheat",
        "maize",
    ]
    assert len(summary["dates"]) == 5 and sum(summary["splits"].values()) == 5
    again = runner.invoke(app, ["import", "worldcereal", str(parquet), "--out", str(tmp_path / "ds")])
    assert again.exit_code == 2 and "already exists" in again.output and "Traceback" not in again.output
    table = pd.DataFrame(
        {"crop": ["a", "b", "a", "b"], **{f"{b}_{t}": [0.1, 0.2, 0.3, 0.4] for b in S2 for t in range(2)}}
    )
    table.to_csv(tmp_path / "t.csv", index=False)
    result = runner.invoke(
        app,
        [
            "import",
            "table",
            str(tmp_path / "t.csv"),
            "--label-column",
            "crop",
            "--out",
            str(tmp_path / "t"),
            "--start-date",
            "2020-01-01",
            "--fractions",
            "0.5,0.5,0",
            "--indices",
            "NDVI,NBR",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["shape"] == [4, 2, 8, 1, 1] and report["splits"]["test"] == 0
    assert report["bands"] == [*S2, "NDVI", "NBR"]
    bad = runner.invoke(
        app,
        [
            "import",
            "table",
            str(tmp_path / "t.csv"),
            "--label-column",
            "crop",
            "--out",
            str(tmp_path / "u"),
            "--fractions",
            "a,b",
        ],
    )
    assert bad.exit_code == 2 and "--fractions" in bad.output


# ---------------------------------------------------------------------------------------------
# real WorldCereal extractions (../shared/data/worldcereal)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def france_2023(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "worldcereal"  # as tests/conftest.py
    if not folder.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared data folder beside the repo")
    out = tmp_path_factory.mktemp("real") / "fra2023"
    report = import_worldcereal(
        folder / "FRA_LPIS_2023_dekad.geoparquet", out, legend=folder / "crop_type_class_mappings.csv"
    )
    return out, report


@pytest.mark.realdata
def test_real_france_2023_dekads(shared_data: Path, france_2023: tuple[Path, object]) -> None:
    out, report = france_2023
    reader = open_dataset(out)
    assert reader.shape == (499, 51, 6, 1, 1)  # 500 parcels, one without any valid date
    assert [s.field_id for s in report.skipped] == ["6394091"]  # type: ignore[attr-defined]
    assert reader.dates[0] == "2022-09-01" and reader.dates[-1] == "2024-01-21"
    assert len(reader.class_table) == 47
    assert "maize" in reader.class_table.names and "longterm_meadows" in reader.class_table.names
    valid = reader.read("mask").mean()
    assert 0.50 < valid < 0.55  # about 52 % of the dekads are cloud-free
    assert sum(reader.splits.values()) == 499 and reader.splits["train"] > 0.65 * 499
    assert np.all(reader.normalisation.mean > 0.03) and np.all(reader.normalisation.mean < 0.4)
    assert np.isfinite(reader.read("patches")).all() and reader.validate() == []
    x, _, label = PatchSequenceDataset(out, "val")[0]
    assert x.shape == (51, 6) and bool(torch.isfinite(x).all()) and 0 <= int(label) < 47


@pytest.mark.realdata
def test_real_france_2023_min_samples_via_cli(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "worldcereal"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "import",
            "worldcereal",
            str(folder / "FRA_LPIS_2023_dekad.geoparquet"),
            "--legend",
            str(folder / "crop_type_class_mappings.csv"),
            "--out",
            str(tmp_path / "ds"),
            "--min-samples",
            "10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["shape"] == [406, 51, 6, 1, 1] and len(report["classes"]) == 12
    assert len(report["dropped_classes"]) == 35
    summary = json.loads(runner.invoke(app, ["dataset", "info", str(tmp_path / "ds"), "--json"]).stdout)
    assert summary["shape"] == [406, 51, 6, 1, 1] and len(summary["dates"]) == 51
    assert {c["name"] for c in summary["classes"]} >= {"maize", "winter_common_soft_wheat", "sunflower"}


@pytest.mark.realdata
def test_real_uganda_wide_and_corsica_months(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "worldcereal"
    legend = folder / "crop_type_class_mappings.csv"
    uganda = import_worldcereal(folder / "test_public_extractions.parquet", tmp_path / "uga", legend=legend)
    assert (
        uganda.shape == (500, 12, 6, 1, 1)
        and uganda.dates[0] == "2016-12-01"
        and uganda.dates[-1] == "2017-11-01"
    )
    assert len(uganda.class_table) == 15 and "unspecified_sorghum" in uganda.class_table.names
    import_table(
        folder / "test_public_extractions.parquet",
        tmp_path / "uga-table",
        label_column="ewoc_code",
        nodata=65535,
        legend=legend,
    )
    np.testing.assert_allclose(
        open_dataset(tmp_path / "uga-table").read("patches"), open_dataset(tmp_path / "uga").read("patches")
    )
    corsica = import_worldcereal(folder / "FRA_LPIS_2022_month.geoparquet", tmp_path / "cor", legend=legend)
    assert corsica.shape[:2] == (498, 17) and corsica.valid_fraction > 0.99


@pytest.mark.realdata
def test_worldcereal_samples_keep_their_lon_lat(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "worldcereal" / "FRA_LPIS_2023_dekad.geoparquet"
    import_worldcereal(source, tmp_path / "ds", min_samples=10)
    reader = open_dataset(tmp_path / "ds")
    coords = reader.read("coords")
    assert reader.attrs["crs"] == "EPSG:4326" and np.isfinite(coords).all()
    # PROVENANCE.md: France, lon −0.46…0.68, lat 43.33…48.76
    assert -0.47 < coords[:, 0].min() and coords[:, 0].max() < 0.69
    assert 43.3 < coords[:, 1].min() and coords[:, 1].max() < 48.77
    frame = pd.read_parquet(source, columns=["sample_id", "lon", "lat"]).groupby("sample_id").first()
    ids = reader.read("field_ids")
    assert len(ids) == len(coords) <= len(frame)


def test_tables_without_lon_lat_have_unknown_locations(tmp_path: Path) -> None:
    table = pd.DataFrame({"label": ["a", "b"], **{f"B02_{t}": [0.1, 0.2] for t in range(3)}})
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    import_table(
        path,
        tmp_path / "ds",
        label_column="label",
        bands=["B02"],
        start_date="2024-01-01",
        fractions=(1.0, 0.0, 0.0),
    )
    reader = open_dataset(tmp_path / "ds")
    assert reader.attrs["crs"] is None and np.isnan(reader.read("coords")).all()


# ---------------------------------------------------------------------------------------------
# features beyond Sentinel-2 bands
# ---------------------------------------------------------------------------------------------
def test_table_of_an_index_and_other_features_is_taken_as_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, t = 12, 4
    table = pd.DataFrame({"id": range(n), "crop": ["wheat", "maize"] * (n // 2)})
    for step in range(t):
        table[f"ndvi_{step}"] = rng.uniform(-0.2, 0.9, n)
        table[f"temperature_{step}"] = rng.uniform(270, 300, n)  # kelvin: a median > 1.5 is no DN here
        table[f"B04_{step}"] = rng.integers(300, 3000, n)  # digital numbers: scaled
    table["notes_0"] = 1.0  # a group not asked for
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    report = import_table(path, tmp_path / "ds", label_column="crop", bands=["NDVI", "temperature", "red"],
                          start_date="2024-03-01", freq="10D")  # fmt: skip
    reader = open_dataset(tmp_path / "ds")
    assert reader.bands == ["NDVI", "temperature", "B04"] and report.shape == (n, t, 3, 1, 1)
    patches = reader.read("patches")[..., 0, 0]
    order = np.argsort(reader.read("field_ids").astype(int))
    np.testing.assert_allclose(patches[order, :, 0], table[[f"ndvi_{s}" for s in range(t)]], rtol=1e-6)
    np.testing.assert_allclose(patches[order, :, 1], table[[f"temperature_{s}" for s in range(t)]], rtol=1e-6)
    np.testing.assert_allclose(patches[order, :, 2], table[[f"B04_{s}" for s in range(t)]] / 1e4, rtol=1e-6)
    assert any("not among the bands asked for were ignored: notes" in note for note in report.notes)
    with pytest.raises(DataError, match="no wide columns .* for VV"):
        import_table(path, tmp_path / "no-vv", label_column="crop", bands=["VV"], start_date="2024-03-01")


def test_features_observed_under_a_cloud_keep_their_values(tmp_path: Path) -> None:
    rows = []
    for t, date in enumerate(DATES):
        cloudy = t == 2
        rows.append({"sample_id": "s", "date": date, "crop": "maize", "VV": -20.0 if cloudy else -10.0 - t,
                     "B04": np.nan if cloudy else 0.1 + 0.01 * t, "B08": np.nan if cloudy else 0.3})  # fmt: skip
        rows.append({**rows[-1], "sample_id": "t", "VV": np.nan if t == 1 else -12.0})
        rows.append({**rows[-1], "sample_id": "u", "VV": np.nan})
    path = tmp_path / "long.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    report = import_table(path, tmp_path / "ds", label_column="crop", bands=["B04", "B08", "VV"],
                          fractions=[1, 0, 0])  # fmt: skip
    reader = open_dataset(tmp_path / "ds")
    assert [(s.sample_id, s.reason) for s in report.skipped] == [("u", "no value of VV on any date")]
    patches, mask = reader.read("patches")[0, :, :, 0, 0], reader.read("mask")
    assert mask.tolist() == [[True, True, False, True, True]] * 2  # steps lacking reflectance; VV does not count
    np.testing.assert_allclose(reader.read("patches")[1, :, 2, 0, 0], -12.0)  # t's VV gap filled
    np.testing.assert_allclose(patches[:, 2], [-10, -11, -20, -13, -14])  # VV as observed, also at step 2
    w = (DATES[2] - DATES[1]).days / (DATES[3] - DATES[1]).days
    np.testing.assert_allclose(patches[2, 0], 0.11 * (1 - w) + 0.13 * w, rtol=1e-6)  # B04 filled in time


def test_indices_are_computed_from_each_steps_reflectance(tmp_path: Path) -> None:
    rows = []
    for t, date in enumerate(DATES):
        cloudy = t == 2
        rows.append({"sample_id": "s", "date": date, "crop": "maize", "B04": np.nan if cloudy else 0.1 + 0.01 * t,
                     "B08": 0.3 + 0.02 * t, "B11": 0.2, "VV": -10.0})  # fmt: skip
    path = tmp_path / "long.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    report = import_table(path, tmp_path / "ds", label_column="crop", bands=["B04", "B08", "VV"],
                          indices=["ndvi", "NDMI"], fractions=[1, 0, 0])  # fmt: skip
    reader = open_dataset(tmp_path / "ds")
    assert reader.bands == report.bands == ["B04", "B08", "VV", "NDVI", "NDMI"]  # B11 read for NDMI only
    patches, mask = reader.read("patches")[0, :, :, 0, 0], reader.read("mask")[0]
    assert mask.tolist() == [True, True, False, True, True]
    red, nir = 0.1 + 0.01 * np.arange(5), 0.3 + 0.02 * np.arange(5)
    ndvi = (nir - red) / (nir + red)
    for t in (0, 1, 3, 4):  # each observation's own index
        np.testing.assert_allclose(patches[t, 3:], [ndvi[t], (nir[t] - 0.2) / (nir[t] + 0.2)], rtol=1e-5)
    w = (DATES[2] - DATES[1]).days / (DATES[3] - DATES[1]).days
    np.testing.assert_allclose(patches[2, 3], ndvi[1] * (1 - w) + ndvi[3] * w, rtol=1e-5)  # filled, as bands
    assert reader.provenance["parameters"]["bands"] == ["B04", "B08", "VV", "NDVI", "NDMI"]
    with pytest.raises(InputError, match="NDVI listed both as a band column and as an index"):
        import_table(path, tmp_path / "twice", label_column="crop", bands=["B04", "NDVI"], indices=["NDVI"])
    with pytest.raises(InputError, match="unknown spectral index 'NDXI'"):
        import_table(path, tmp_path / "unknown", label_column="crop", bands=["B04"], indices=["NDXI"])
    with pytest.raises(DataError, match="no column for B05"):  # NDRE needs the red edge
        import_table(path, tmp_path / "no-b05", label_column="crop", bands=["B04", "B08"], indices=["NDRE"])


@pytest.mark.realdata
def test_real_worldcereal_backscatter_and_meteorology(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "worldcereal"
    features = ["B04", "B08", "S1-SIGMA0-VV", "S1-SIGMA0-VH", "AGERA5-TMEAN", "AGERA5-PRECIP", "elevation"]
    report = import_worldcereal(folder / "FRA_LPIS_2023_dekad.geoparquet", tmp_path / "fra", bands=features)
    reader = open_dataset(tmp_path / "fra")
    assert reader.bands == ["B04", "B08", "VV", "VH", "AGERA5-TMEAN", "AGERA5-PRECIP", "elevation"]
    mean = dict(zip(reader.bands, reader.normalisation.mean, strict=True))
    assert -16 < mean["VV"] < -6 and -24 < mean["VH"] < -12 and mean["VV"] > mean["VH"]  # dB over fields
    assert 275 < mean["AGERA5-TMEAN"] < 295  # kelvin: a French year's mean temperature
    assert 0 < mean["AGERA5-PRECIP"] < 100 and 0 < mean["elevation"] < 400  # mm per dekad, metres
    assert "20 log10(DN) − 83 dB" in reader.provenance["radiometry"]
    uganda = import_worldcereal(folder / "test_public_extractions.parquet", tmp_path / "uga",
                                bands=["B08", "SAR-VV", "METEO-temperature_mean"])  # fmt: skip
    assert uganda.bands == ["B08", "VV", "METEO-temperature_mean"]
    mean = open_dataset(tmp_path / "uga").normalisation.mean
    assert -16 < mean[1] < -4 and 290 < mean[2] < 310  # the wide layout's SAR and meteo columns
    assert report.valid_fraction > 0.45


@pytest.mark.parametrize("separator", ["\t", ","])
def test_ucr_archive_file(tmp_path: Path, separator: str) -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (30, 7)).round(4)
    labels = np.repeat([1, 2, 3], 10)
    path = tmp_path / "Toy_TRAIN.tsv"
    path.write_text(
        "\n".join(separator.join([f"{c}", *map(str, row)]) for c, row in zip(labels, values)) + "\n"
    )
    report = import_ucr(path, tmp_path / "ds", fractions=[0.6, 0.2, 0.2], start_date="2021-04-01", freq="5D")
    reader = open_dataset(tmp_path / "ds")
    assert (
        reader.shape == (30, 7, 1, 1, 1)
        and reader.bands == ["NDVI"]
        and reader.class_table.names == ["1", "2", "3"]
    )
    assert reader.dates[:2] == ["2021-04-01", "2021-04-06"] and reader.provenance["importer"] == "ucr"
    rows = reader.read("field_ids").astype(int)  # each series is its own field, numbered by its row
    np.testing.assert_allclose(reader.read("patches")[:, :, 0, 0, 0], values[rows], rtol=1e-6)
    assert [reader.class_table.names[k] for k in reader.read("labels")] == [str(c) for c in labels[rows]]
    assert sum(report.splits.values()) == 30
    with pytest.raises(InputError, match="file not found"):
        import_ucr(tmp_path / "absent.tsv", tmp_path / "x")


@pytest.mark.realdata
def test_real_ucr_crop_training_file(shared_data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["import", "ucr", str(shared_data / "ucr-crop" / "Crop_TRAIN.tsv"), "--out", str(tmp_path / "ucr"),
              "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["shape"] == [7200, 46, 1, 1, 1] and report["bands"] == ["NDVI"]
    assert len(report["classes"]) == 24 and all(sum(c[s] for s in ("train", "val", "test")) == 300
                                                for c in report["classes"])  # fmt: skip
    assert report["valid_fraction"] == 1.0
