"""benchmarks/silhouette_scale.py: how big an object looks against its primitive, from the evaluation views."""

import pytest

from benchmarks.silhouette_scale import silhouette_measures
from pipeline.config import from_dict
from pipeline.nerf.field import Field
from pipeline.world.scenes import PrimitiveField


class Scaled(Field):
    """A primitive scaled about the origin by `s`."""

    def __init__(self, shape: str, s: float) -> None:
        super().__init__()
        self.inner, self.s, self.bound = PrimitiveField(shape), s, 1.0

    def density_albedo(self, pts):
        return self.inner.density_albedo(pts / self.s)


def test_the_primitive_looks_its_own_size_and_a_scaled_one_its_scale():
    cfg = from_dict({})
    same = silhouette_measures(PrimitiveField("sphere"), cfg, "sphere", 32, samples=48, views=2)
    assert same["sil_iou"] == 1.0 and same["scale"] == 1.0 and same["soft"] == same["true_soft"]
    small = silhouette_measures(Scaled("sphere", 0.8), cfg, "sphere", 64, samples=96, views=2)
    # nested discs: IoU = area ratio = scale²; the apparent radius of a sphere scaled by 0.8 seen from distance d is
    # arcsin(0.4 / d) against arcsin(0.5 / d), a hair under 0.8 (0.784 here), to a pixel of the 9-pixel radius
    assert small["sil_iou"] == pytest.approx(small["scale"] ** 2, abs=1e-6)
    assert 0.8 - 0.8 / 9 < small["scale"] < 0.8
