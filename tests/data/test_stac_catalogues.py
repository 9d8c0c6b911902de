"""The STAC reader on the real catalogue items in ../shared/data/s2-metadata/stac (see its PROVENANCE.md):
per file, the band → asset mapping, the processing baseline and where it was found, the decided DN offset
and the MetadataConflictWarning where the item's declared raster offset contradicts it; the mixed search
responses' Landsat, Sentinel-1 and L1C items are named in the error."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pystac
import pytest

from cropstar.data.cube import open_cube
from cropstar.data.sources.stac import decide_item_offset
from cropstar.data.sources.stac_catalogues import CatalogueItem, read_catalogue_item
from cropstar.errors import DataError, MetadataConflictWarning

pytestmark = [
    pytest.mark.realdata,
    # pystac's own note on migrating the storage extension of sentinel-2-c1-l2a items
    pytest.mark.filterwarnings("ignore:Could not parse bucket:UserWarning"),
]

ALL_BANDS = {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL"}
EARTH_SEARCH_V1_KEYS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
    "SCL": "scl",
}
BAND_NAME_KEYS = {band: band for band in ALL_BANDS}  # Planetary Computer, Earth Search v0
CDSE_KEYS = {
    "B01": "B01_60m", "B02": "B02_10m", "B03": "B03_10m", "B04": "B04_10m", "B05": "B05_20m",
    "B06": "B06_20m", "B07": "B07_20m", "B08": "B08_10m", "B8A": "B8A_20m", "B09": "B09_60m",
    "B11": "B11_20m", "B12": "B12_20m", "SCL": "SCL_20m",
}  # B01: the native 60 m, not the upsampled B01_20m; AOT, WVP, TCI and RGBA_FAKE ignored
EARTH_SEARCH_COGS = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/"
PC_BLOB = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/"
EARTH_SEARCH_FLAG = "item property earthsearch:boa_offset_applied"
ES_V0_BASELINE = "N0214 in item property sentinel:product_id"  # Earth Search v0 has no baseline property


@dataclass(frozen=True)
class Case:
    """What one real item must give."""

    file: str  # under s2-metadata/stac/
    item_id: str
    time: str
    tile: str
    keys: dict[str, str]  # band → asset key
    hrefs: tuple[str, str, str]  # B04, B8A, SCL
    baseline: str
    baseline_found_by: str
    boa_offset: float
    decided_by: str
    contradicted: bool = False  # the declared raster offset (−1000 DN) differs from the decided one


def _pc(folder: str, safe: str, granule: str, stem: str) -> tuple[str, str, str]:
    images = f"{PC_BLOB}{folder}/{safe}.SAFE/GRANULE/{granule}/IMG_DATA/"
    r10, r20 = f"{images}R10m/{stem}", f"{images}R20m/{stem}"
    return f"{r10}_B04_10m.tif", f"{r20}_B8A_20m.tif", f"{r20}_SCL_20m.tif"


def _cogs(base: str) -> tuple[str, str, str]:
    return f"{base}/B04.tif", f"{base}/B8A.tif", f"{base}/SCL.tif"


CDSE_SAFE = (
    "s3://eodata/Sentinel-2/MSI/L2A/2025/03/30/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914"
    ".SAFE/GRANULE/L2A_T33UWP_A002952_20250330T100435/IMG_DATA/"
)
ES_2023 = Case(
    "earth-search-v1/sentinel-2-l2a/S2A_13TDE_20231008_0_L2A.json",
    "S2A_13TDE_20231008_0_L2A", "2023-10-08T18:02:55.276", "13TDE", EARTH_SEARCH_V1_KEYS,
    _cogs(f"{EARTH_SEARCH_COGS}13/T/DE/2023/10/S2A_13TDE_20231008_0_L2A"),
    "05.09", "item property s2:processing_baseline", 0.0, EARTH_SEARCH_FLAG, contradicted=True,
)
ES_2025 = Case(
    "earth-search-v1/sentinel-2-l2a/S2B_20EPT_20250731_0_L2A.json",
    "S2B_20EPT_20250731_0_L2A", "2025-07-31T13:19:22.930", "20EPT", EARTH_SEARCH_V1_KEYS,
    _cogs(f"{EARTH_SEARCH_COGS}20/E/PT/2025/7/S2B_20EPT_20250731_0_L2A"),
    "05.11", "item property s2:processing_baseline", 0.0, EARTH_SEARCH_FLAG, contradicted=True,
)
ES_C1 = Case(
    "earth-search-v1/sentinel-2-c1-l2a/S2B_T20EPT_20250731T131905_L2A.json",
    "S2B_T20EPT_20250731T131905_L2A", "2025-07-31T13:19:22.930", "20EPT", EARTH_SEARCH_V1_KEYS,
    _cogs(
        "https://e84-earth-search-sentinel-data.s3.us-west-2.amazonaws.com/sentinel-2-c1-l2a/20/E/PT/2025/7/"
        "S2B_T20EPT_20250731T131905_L2A"
    ),
    "05.11", "item property s2:processing_baseline", -1000.0, "item property s2:processing_baseline",
)
CASES = [
    ES_2023,
    ES_2025,
    ES_C1,
    Case(
        "cdse/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json",
        "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914", "2025-03-30T10:00:51.025", "33UWP",
        CDSE_KEYS,
        (
            f"{CDSE_SAFE}R10m/T33UWP_20250330T100051_B04_10m.jp2",
            f"{CDSE_SAFE}R20m/T33UWP_20250330T100051_B8A_20m.jp2",
            f"{CDSE_SAFE}R20m/T33UWP_20250330T100051_SCL_20m.jp2",
        ),
        "05.11", "item property processing:version", -1000.0, "item property processing:version",
    ),
    Case(
        "earth-search-v0/S2A_28QCH_20200714_0_L2A.json",
        "S2A_28QCH_20200714_0_L2A", "2020-07-14T11:55:52", "28QCH", BAND_NAME_KEYS,
        _cogs(f"{EARTH_SEARCH_COGS}2020/S2A_28QCH_20200714_0_L2A"),
        "02.14", ES_V0_BASELINE, 0.0, ES_V0_BASELINE,
    ),
    Case(
        "planetary-computer/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json",
        "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531", "2019-06-29T21:25:29.024", "06VVN",
        BAND_NAME_KEYS,
        _pc(
            "06/V/VN/2019/06/29", "S2B_MSIL2A_20190629T212529_N0212_R043_T06VVN_20201006T080531",
            "L2A_T06VVN_A012081_20190629T212530", "T06VVN_20190629T212529",
        ),
        "02.12", "item property s2:processing_baseline", 0.0, "item property s2:processing_baseline",
    ),
    Case(
        "planetary-computer/items-page_S2A_MSIL2A_20230216T235751_R087_T52CEB_20230217T134604.json",
        "S2A_MSIL2A_20230216T235751_R087_T52CEB_20230217T134604", "2023-02-16T23:57:51.024", "52CEB",
        BAND_NAME_KEYS,
        _pc(
            "52/C/EB/2023/02/16", "S2A_MSIL2A_20230216T235751_N0400_R087_T52CEB_20230217T134604",
            "L2A_T52CEB_A039981_20230216T235752", "T52CEB_20230216T235751",
        ),
        "04.00", "item property s2:processing_baseline", -1000.0, "item property s2:processing_baseline",
    ),
]
PC_TWO_ITEMS = (
    "planetary-computer/two-items_S2B_MSIL2A_20240825T173909_R098_T13TDE"
    "+S2A_MSIL2A_20240823T174901_R141_T13TDE.json"
)
CASES += [
    Case(
        PC_TWO_ITEMS, item_id, when, "13TDE", BAND_NAME_KEYS,
        _pc(folder, safe, granule, stem),
        "05.11", "item property s2:processing_baseline", -1000.0, "item property s2:processing_baseline",
    )
    for item_id, safe, when, folder, granule, stem in [
        (  # Planetary Computer ids drop the N0511 of the product name
            "S2B_MSIL2A_20240825T173909_R098_T13TDE_20240825T215747",
            "S2B_MSIL2A_20240825T173909_N0511_R098_T13TDE_20240825T215747", "2024-08-25T17:39:09.024",
            "13/T/DE/2024/08/25", "L2A_T13TDE_A039020_20240825T174804", "T13TDE_20240825T173909",
        ),
        (
            "S2A_MSIL2A_20240823T174901_R141_T13TDE_20240824T013055",
            "S2A_MSIL2A_20240823T174901_N0511_R141_T13TDE_20240824T013055", "2024-08-23T17:49:01.024",
            "13/T/DE/2024/08/23", "L2A_T13TDE_A047900_20240823T175543", "T13TDE_20240823T174901",
        ),
    ]
]
RAW = "earth-search-v1/raw/"
SEARCH_WITH_LANDSAT = f"{RAW}es-v1_POST-search_2023-10-08_sentinel-2-l2a+landsat-c2-l2.response.json"
FILTER_PAGE = f"{RAW}es-v1_POST-search_cql2-filter_page1.response.json"


@pytest.fixture
def stac_folder(shared_data: Path) -> Path:
    return shared_data / "s2-metadata" / "stac"


def load_items(path: Path) -> list[pystac.Item]:
    """The items of a real Item or ItemCollection file, loaded by pystac from its path."""
    data = pystac.StacIO.default().read_json(str(path))
    if data["type"] == "Feature":
        return [pystac.Item.from_dict(data)]
    return list(pystac.ItemCollection.from_dict(data))


def decide_and_record(scene: CatalogueItem) -> tuple[float, str, list[str]]:
    """The decided offset, what decided it, and the MetadataConflictWarning messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decision = decide_item_offset(scene)
    messages = [str(w.message) for w in caught if issubclass(w.category, MetadataConflictWarning)]
    return decision.boa_offset, decision.decided_by, messages


def check_case(scene: CatalogueItem, case: Case) -> None:
    assert scene.item_id == case.item_id
    assert scene.time == pd.Timestamp(case.time)
    assert scene.tile == case.tile
    assert {band: found.key for band, found in scene.bands.items()} == case.keys
    assert tuple(scene.bands[b].asset.href for b in ("B04", "B8A", "SCL")) == case.hrefs
    assert scene.bands["B8A"].asset.href != scene.bands["B08"].asset.href
    assert scene.baseline is not None
    assert (scene.baseline.value, scene.baseline.found_by) == (case.baseline, case.baseline_found_by)
    offset, decided_by, messages = decide_and_record(scene)
    assert (offset, decided_by) == (case.boa_offset, case.decided_by)
    if case.contradicted:
        assert len(messages) == 1
        message = messages[0]
        assert f"STAC item {case.item_id}" in message
        assert "assets coastal, blue, green, red," in message and "nir08" in message
        assert "raster offset -0.1 and scale 0.0001 (= -1000 DN)" in message
        assert "BOA offset used is 0 DN" in message and "earthsearch:boa_offset_applied" in message
        assert "scl" not in message.split("declare")[0]  # SCL declares nothing and is not checked
    else:
        assert messages == []
    with warnings.catch_warnings():  # an explicit offset overrides everything, silently
        warnings.simplefilter("error", MetadataConflictWarning)
        assert decide_item_offset(scene, boa_offset=-1000.0).boa_offset == -1000.0


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file.split('/')[0]}:{c.item_id}" for c in CASES])
def test_real_item_bands_baseline_and_offset(stac_folder: Path, case: Case) -> None:
    items = {item.id: item for item in load_items(stac_folder / case.file)}
    check_case(read_catalogue_item(items[case.item_id]), case)


def test_earth_search_warning_goes_through_pytest_warns(stac_folder: Path) -> None:
    scene = read_catalogue_item(load_items(stac_folder / ES_2023.file)[0])
    with pytest.warns(MetadataConflictWarning, match=r"S2A_13TDE_20231008_0_L2A: assets coastal, blue"):
        assert decide_item_offset(scene).boa_offset == 0.0


def test_cdse_aot_wvp_and_fake_asset_are_not_bands(stac_folder: Path) -> None:
    item = load_items(stac_folder / CASES[3].file)[0]
    scene = read_catalogue_item(item)
    used = {found.key for found in scene.bands.values()}
    assert {"AOT_10m", "WVP_10m", "RGBA_FAKE", "TCI_10m", "B01_20m", "B04_20m", "SCL_60m"} <= set(item.assets)
    assert used.isdisjoint({"AOT_10m", "AOT_20m", "WVP_10m", "WVP_20m", "RGBA_FAKE", "TCI_10m", "B01_20m"})
    assert item.assets["AOT_10m"].extra_fields["raster:offset"] == -0.1  # wrongly declared, never checked
    assert {found.declared_dn_offset for band, found in scene.bands.items() if band != "SCL"} == {-1000.0}


def test_earth_search_jp2_twins_are_not_read(stac_folder: Path) -> None:
    item = load_items(stac_folder / ES_2023.file)[0]
    assert "red-jp2" in item.assets and "nir08-jp2" in item.assets
    scene = read_catalogue_item(item)
    assert not any(found.key.endswith("-jp2") for found in scene.bands.values())
    assert all(found.asset.href.startswith(EARTH_SEARCH_COGS) for found in scene.bands.values())


def test_search_response_with_landsat_names_the_landsat_item(stac_folder: Path) -> None:
    path = stac_folder / SEARCH_WITH_LANDSAT
    sentinel, landsat = load_items(path)
    check_case(read_catalogue_item(sentinel), ES_2023)  # the same item as the extracted file
    not_sentinel_2 = (
        r"STAC item LC08_L2SP_033032_20231008_02_T1 \(collection landsat-c2-l2\) is not a Sentinel-2 L2A "
        r"product: its platform is 'landsat-8'"
    )
    with pytest.raises(DataError, match=not_sentinel_2):
        read_catalogue_item(landsat)
    with pytest.raises(DataError, match="LC08_L2SP_033032_20231008_02_T1"):
        open_cube(path, bands=["B04"])


def test_filter_page_reads_l2a_items_and_names_the_others(stac_folder: Path) -> None:
    path = stac_folder / FILTER_PAGE
    items = load_items(path)
    read, refused = {}, {}
    for item in items:
        try:
            read[item.id] = decide_and_record(read_catalogue_item(item))
        except DataError as error:
            refused[item.id] = str(error)
    assert {i.collection_id for i in items if i.id in read} == {"sentinel-2-l2a", "sentinel-2-c1-l2a"}
    for item_id, (offset, decided_by, messages) in read.items():
        if item_id.endswith("_0_L2A"):  # sentinel-2-l2a: flag true, declared -0.1 contradicted
            assert (offset, decided_by, len(messages)) == (0.0, EARTH_SEARCH_FLAG, 1)
        else:  # sentinel-2-c1-l2a: baseline 05.11 and declared -0.1 agree
            assert (offset, messages) == (-1000.0, [])
    assert len(refused) == 5
    for item_id, message in refused.items():
        assert f"STAC item {item_id} " in message
        sentinel_1 = item_id.startswith("S1A")
        assert ("platform is 'sentinel-1a'" if sentinel_1 else "s2:product_type is 'S2MSI1C'") in message
    check_case(read_catalogue_item(next(i for i in items if i.id == ES_2025.item_id)), ES_2025)
    check_case(read_catalogue_item(next(i for i in items if i.id == ES_C1.item_id)), ES_C1)
    with pytest.raises(DataError, match="STAC item S1A_IW_GRDH_1SSH_20250731T135702"):
        open_cube(path, bands=["B04"])
    l2a = pystac.ItemCollection([i for i in items if i.id in read])
    same_scene = (
        r"STAC items S2B_T20EPT_20250731T131905_L2A and S2B_20EPT_20250731_0_L2A .* share the acquisition "
        r"2025-07-31T13:19:22.930000 and tile 20EPT"
    )
    with pytest.raises(DataError, match=same_scene):
        open_cube(l2a, bands=["B04"])
