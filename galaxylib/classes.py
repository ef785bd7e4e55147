"""The Galaxy10 DECaLS class table, defined once for the whole kit.

Names follow the dataset documentation (Leung & Bovy, Zenodo 10845026).
astroNN's ``Galaxy10Class`` calls class 3 "Smooth, Cigar shaped"; that is wrong.
"""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
)
NUM_CLASSES = len(CLASS_NAMES)

# Galaxy Zoo 1 coarse classes that the ten refine (see ../shared/gz1_coarse/README.md).
COARSE_OF_CLASS: dict[int, str] = {
    0: "merger",
    1: "merger",
    2: "smooth",
    3: "smooth",
    4: "smooth",
    5: "spiral",
    6: "spiral",
    7: "spiral",
    8: "edge_on",
    9: "edge_on",
}
COARSE_NAMES: tuple[str, ...] = ("smooth", "spiral", "edge_on", "merger")
