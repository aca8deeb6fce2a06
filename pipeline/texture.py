"""UV-textured meshes: unwrap with xatlas, bake the field's albedo into a texture image, pad the seams.

What the peers export (threestudio and stable-dreamfusion: OBJ + MTL + PNG; DreamGaussian: GLB): a texture carries
colour between the vertices, where vertex colours can only interpolate, so the exported object looks like the
field's renders rather than a blur of them.

- **Unwrap**: `xatlas.parametrize` cuts the mesh into charts and packs them into [0, 1]²; vertices on chart seams
  are split (the mesh gains vertices, keeps its triangles and its surface).
- **Bake**: every texel centre covered by a triangle in UV space maps through its barycentric coordinates to a
  point on the surface and its triangle's normal, where the colour is read from the field (the mesh stage composites
  the field along the normal, as its renders do): the texture is the field's own colour, not an interpolation of
  vertex colours.
- **Seam padding**: texels just outside the charts take the mean of their covered neighbours, `padding` rings deep,
  so bilinear filtering and mipmaps at a chart's edge do not bleed the background in.

Images follow the OpenGL/trimesh convention: v points up, image row 0 is v = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def unwrap(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertex map [V'] into the input vertices, faces [F, 3] over the new vertices, uvs [V', 2] in [0, 1])."""
    import xatlas

    vmapping, new_faces, uvs = xatlas.parametrize(vertices.astype(np.float32), faces.astype(np.uint32))
    return vmapping.astype(np.int64), new_faces.astype(np.int64), uvs.astype(np.float64)


def rasterise(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre, and where: (texel rows, texel columns, face index, barycentric
    weights [N, 3]) for the N covered texels (the first triangle wins where charts touch). Vectorised over the
    texels of each triangle's bounding box."""
    p = uvs[faces] * size  # [F, 3, 2] in texel units, v up
    lo = np.clip(np.floor(p.min(1) - 0.5), 0, size - 1).astype(np.int64)
    hi = np.clip(np.ceil(p.max(1) - 0.5), 0, size - 1).astype(np.int64)
    w, h = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    counts = w * h
    face = np.repeat(np.arange(len(faces)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    tx = lo[face, 0] + local % w[face]
    ty = lo[face, 1] + local // w[face]
    centre = np.stack([tx + 0.5, ty + 0.5], 1)
    a, b, c = p[face, 0], p[face, 1], p[face, 2]
    v0, v1, v2 = b - a, c - a, centre - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    denom = d00 * d11 - d01 * d01
    ok = np.abs(denom) > 1e-12
    safe = np.where(ok, denom, 1.0)
    bv, bw = (d11 * d20 - d01 * d21) / safe, (d00 * d21 - d01 * d20) / safe
    bary = np.stack([1 - bv - bw, bv, bw], 1)
    inside = ok & (bary >= -1e-6).all(1)
    texel = ty * size + tx
    texel, first = np.unique(texel[inside], return_index=True)
    face, bary = face[inside][first], bary[inside][first]
    return texel // size, texel % size, face, np.clip(bary, 0, 1)


def pad_seams(image: np.ndarray, covered: np.ndarray, rings: int) -> np.ndarray:
    """Grow the charts `rings` texels outward: an uncovered texel next to covered ones takes their mean."""
    image, covered = image.copy(), covered.copy()
    for _ in range(rings):
        total = np.zeros_like(image)
        count = np.zeros(covered.shape, dtype=np.float64)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            shifted = np.roll(np.roll(covered, dy, 0), dx, 1)
            total += np.roll(np.roll(image * covered[..., None], dy, 0), dx, 1)
            count += shifted
        grow = ~covered & (count > 0)
        if not grow.any():
            break
        image[grow] = total[grow] / count[grow][:, None]
        covered |= grow
    return image


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals [F, 3] of the triangles (by their winding)."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def bake(
    colour: Callable[[np.ndarray, np.ndarray], np.ndarray],
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    size: int,
    padding: int,
    background: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> np.ndarray:
    """The texture [size, size, 3] in [0, 1]: `colour` (surface points [N, 3] and their normals [N, 3] → colours
    [N, 3]) read at every covered texel, seams padded `padding` texels, the rest `background`. Row 0 is v = 1."""
    rows_up, cols, face, bary = rasterise(uvs, faces, size)
    points = (vertices[faces[face]] * bary[..., None]).sum(1)
    normals = face_normals(vertices, faces)[face]
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = background
    covered = np.zeros((size, size), dtype=bool)
    rows = size - 1 - rows_up
    image[rows, cols] = np.clip(colour(points, normals), 0.0, 1.0)
    covered[rows, cols] = True
    return pad_seams(image, covered, padding)


def sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of `image` (row 0 = v 1) at uv [N, 2] → [N, C] (what a renderer does with the texture)."""
    size_v, size_u = image.shape[:2]
    x = np.clip(uv[:, 0] * size_u - 0.5, 0, size_u - 1)
    y = np.clip((1 - uv[:, 1]) * size_v - 0.5, 0, size_v - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, size_u - 1), np.minimum(y0 + 1, size_v - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
