"""Builds the demo basemap ``hub/dashboard/basemap/demo-khon-kaen.pmtiles``: a small vector PMTiles file for the
dashboard map when there is no city extract, from data the repository holds.

It is schematic, not a street map: land over central Khon Kaen, Bueng Kaen Nakhon lake (an ellipse where the lake
is), the demo zones' outlines and their names in Thai and English, in the layer names of the Protomaps basemap
(``earth``, ``water``, ``boundaries``, ``places``) so that the dashboard draws it with the same style as a city's
extract. A maintainer reruns it after changing the zones (``python -m hub.dashboard.demo_basemap``); the output
is the same bytes for the same input, which a test checks against the committed file.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import mapbox_vector_tile  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import shapely
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer
from shapely.geometry import LineString, Point, Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry

from hub.gis.reports import DEMO_ZONES

OUT = Path(__file__).with_name("basemap") / "demo-khon-kaen.pmtiles"
BOUNDS = (102.76, 16.38, 102.90, 16.50)
"""west, south, east, north (degrees): the demo zones and a margin."""
ZOOMS = range(10, 16)
EXTENT = 4096
LAKE_NAMES = {"name": "บึงแก่นนคร", "name:th": "บึงแก่นนคร", "name:en": "Bueng Kaen Nakhon"}
LAKE_CENTRE, LAKE_RADII = (102.8365, 16.4105), (0.0048, 0.0042)
"""Bueng Kaen Nakhon, drawn as an ellipse of about its size where it lies (degrees)."""
R = 6378137.0


def _mercator(lonlat: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Longitude and latitude (degrees, one row a point) to web mercator metres."""
    lon, lat = np.radians(lonlat[:, 0]), np.radians(lonlat[:, 1])
    return np.column_stack([lon * R, np.log(np.tan(np.pi / 4 + lat / 2)) * R])


def _tile_box(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """A tile's bounds in web mercator metres."""
    size = 2 * math.pi * R / 2**z
    west = -math.pi * R + x * size
    north = math.pi * R - y * size
    return west, north - size, west + size, north


def _tile_range(z: int) -> tuple[range, range]:
    def tx(lon: float) -> int:
        return int((lon + 180) / 360 * 2**z)

    def ty(lat: float) -> int:
        r = math.radians(lat)
        return int((1 - math.log(math.tan(r) + 1 / math.cos(r)) / math.pi) / 2 * 2**z)

    west, south, east, north = BOUNDS
    return range(tx(west), tx(east) + 1), range(ty(north), ty(south) + 1)


def _features() -> dict[str, list[tuple[BaseGeometry, dict[str, Any]]]]:
    """Each layer's features in web mercator."""
    def project(g: BaseGeometry) -> BaseGeometry:
        return shapely.transform(g, _mercator)

    (cx, cy), (rx, ry) = LAKE_CENTRE, LAKE_RADII
    lake = Polygon([(cx + rx * math.cos(a / 32 * math.pi), cy + ry * math.sin(a / 32 * math.pi)) for a in range(64)])
    zones = json.loads(DEMO_ZONES.read_text(encoding="utf-8"))["features"]
    layers: dict[str, list[tuple[BaseGeometry, dict[str, Any]]]] = {
        "earth": [(project(box(*BOUNDS)), {"kind": "earth"})],
        "water": [(project(lake), {"kind": "lake", **LAKE_NAMES}),
                  (project(lake.representative_point()), {"kind": "lake", "min_zoom": 13, **LAKE_NAMES})],
        "boundaries": [], "places": []}
    for f in zones:
        outline = shape(f["geometry"])
        props = f["properties"]
        layers["boundaries"].append((project(LineString(outline.exterior.coords)),
                                     {"kind": "locality", "kind_detail": 8, "name": props["name_th"]}))
        layers["places"].append((project(Point(outline.centroid.coords[0])),
                                 {"kind": "locality", "min_zoom": 10, "population_rank": 9, "name": props["name_th"],
                                  "name:th": props["name_th"], "name:en": props["name_en"]}))
    return layers


def _tile(layers: dict[str, list[tuple[BaseGeometry, dict[str, Any]]]], z: int, x: int, y: int) -> bytes | None:
    """One gzip-compressed MVT tile, or None when nothing falls in it."""
    bounds = _tile_box(z, x, y)
    pad = (bounds[2] - bounds[0]) * 16 / EXTENT
    clip = box(bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad)
    out = []
    for name, features in layers.items():
        kept = [{"geometry": mapping(g.intersection(clip)), "properties": props}
                for g, props in features if g.intersects(clip)]
        if kept:
            out.append({"name": name, "features": kept})
    if not out:
        return None
    with warnings.catch_warnings():  # the encoder calls a shapely function shapely now calls deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        data = mapbox_vector_tile.encode(out, default_options={"quantize_bounds": bounds, "extents": EXTENT})
    return gzip.compress(data, mtime=0)


def build(out: Path = OUT) -> int:
    """Write the demo basemap to ``out``; the number of tiles."""
    layers = _features()
    tiles = []
    for z in ZOOMS:
        xs, ys = _tile_range(z)
        for x in xs:
            for y in ys:
                data = _tile(layers, z, x, y)
                if data is not None:
                    tiles.append((zxy_to_tileid(z, x, y), data))
    west, south, east, north = BOUNDS
    e7 = 10_000_000
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        writer = Writer(f)  # type: ignore[no-untyped-call]
        for tile_id, data in sorted(tiles):
            writer.write_tile(tile_id, data)  # type: ignore[no-untyped-call]
        header = {"tile_type": TileType.MVT, "tile_compression": Compression.GZIP,
                  "min_lon_e7": int(west * e7), "min_lat_e7": int(south * e7), "max_lon_e7": int(east * e7),
                  "max_lat_e7": int(north * e7), "center_zoom": 13,
                  "center_lon_e7": int((west + east) / 2 * e7), "center_lat_e7": int((south + north) / 2 * e7)}
        metadata = {"name": "Nakhon demo basemap (schematic)", "attribution": "Nakhon demo data",
                    "vector_layers": [{"id": name, "fields": {}} for name in layers]}
        writer.finalize(header, metadata)  # type: ignore[no-untyped-call]
    return len(tiles)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    print(f"{build(target)} tiles written to {target}")
