"""Face geometry and resampling shared by training, evaluation and the runtime.

Pixel convention everywhere: RGB, channels last for numpy images (H, W, 3) or (N, H, W, 3), uint8 in
0..255 or floating point in [0, 1]. Pixel centres sit at integer coordinates (OpenCV's convention), so
landmarks from common detectors (YuNet, RetinaFace, MTCNN) can be passed as they come.

- :func:`align` warps a photo onto the 5-point template with a similarity transform.
- :func:`resize` is antialiased bicubic resampling that matches Pillow's ``Image.resize(..., BICUBIC)``.
- :func:`degrade` is the one definition of a low-resolution face: ``resize`` of the 128×128 crop to 16×16.
"""
from __future__ import annotations

import functools

import numpy as np

HR_SIZE = 128
LR_SIZE = 16

# ArcFace 5-point template on a 112×112 crop: eye on the image's left (the subject's right eye), eye on
# the image's right, nose tip, mouth corner on the image's left, mouth corner on the image's right.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
TEMPLATE_128 = TEMPLATE_112 * (HR_SIZE / 112.0)


def template(size: int = HR_SIZE) -> np.ndarray:
    """The 5 template points (x, y) for a ``size``×``size`` crop."""
    return TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``.

    Umeyama's closed form without reflection. Returns the 2×3 matrix ``M`` with ``dst ≈ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (K, 2) point arrays with K >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or Inf")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear warp of an (H, W, C) image by the 2×3 ``matrix`` (source → output) into size×size.

    Samples outside the image repeat the nearest edge pixel. Returns the warped image (same dtype as the
    input; uint8 is rounded) and a boolean (size, size) mask that is True where the sample fell inside.
    """
    height, width = image.shape[:2]
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    inside = (src_x > -0.5) & (src_x < width - 0.5) & (src_y > -0.5) & (src_y < height - 0.5)
    src_x = np.clip(src_x, 0, width - 1)
    src_y = np.clip(src_y, 0, height - 1)
    x0 = np.minimum(np.floor(src_x).astype(np.intp), width - 2) if width > 1 else np.zeros_like(src_x, np.intp)
    y0 = np.minimum(np.floor(src_y).astype(np.intp), height - 2) if height > 1 else np.zeros_like(src_y, np.intp)
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    fx = (src_x - x0)[..., None]
    fy = (src_y - y0)[..., None]
    pixels = image.astype(np.float64)
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x1] * fx
    bottom = pixels[y1, x0] * (1 - fx) + pixels[y1, x1] * fx
    warped = top * (1 - fy) + bottom * fy
    if image.dtype == np.uint8:
        warped = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    else:
        warped = warped.astype(image.dtype)
    return warped, inside


def align(image: np.ndarray, landmarks: np.ndarray, size: int = HR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Crop the face of ``image`` onto the template: a similarity warp of its 5 landmarks.

    ``image`` is (H, W, 3) uint8 or float; ``landmarks`` is (5, 2) in pixel coordinates of ``image``, in
    the template's order (eye on the image's left, other eye, nose, left mouth corner, right mouth corner).
    Returns the ``size``×``size``×3 crop and the boolean mask of pixels that came from inside the photo.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image too small to align: {image.shape}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got shape {landmarks.shape}")
    matrix = similarity_transform(landmarks, template(size))
    return warp_affine(image, matrix, size)


def _bicubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic convolution with a = -0.5, Pillow's BICUBIC filter.
    a = -0.5
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) matrix of antialiased bicubic resampling along one axis (Pillow's rule).

    The filter is widened by the reduction factor when shrinking, and the weights of each output sample
    are renormalised where the window is clipped at the borders.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 2.0 * filter_scale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for out_index in range(out_size):
        centre = (out_index + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps = np.arange(first, last)
        kernel = _bicubic((taps - centre + 0.5) / filter_scale)
        total = kernel.sum()
        weights[out_index, first:last] = kernel / total if total != 0 else kernel
    weights.setflags(write=False)
    return weights


def resize(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of (H, W, C) or (N, H, W, C) images to ``size`` (int or (height, width)).

    uint8 in gives uint8 out, rounded after each axis as Pillow does; float in gives float out, unclipped.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected (H, W, C) or (N, H, W, C) images, got shape {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"expected uint8 or floating point images, got {images.dtype}")
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else size
    single = images.ndim == 3
    batch = images[None] if single else images
    in_h, in_w = batch.shape[1:3]
    if in_h < 1 or in_w < 1:
        raise ValueError(f"images must be at least 1×1, got shape {images.shape}")
    is_uint8 = images.dtype == np.uint8
    work = np.float32 if images.dtype in (np.uint8, np.float16, np.float32) else np.float64

    def settle(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(values), 0, 255) if is_uint8 else values

    result = batch.astype(work)
    # Pillow resizes the width first, then the height.
    if out_w != in_w:
        weights = resize_weights(in_w, out_w).astype(work)
        result = settle(np.matmul(result.transpose(0, 1, 3, 2), weights.T).transpose(0, 1, 3, 2))
    if out_h != in_h:
        weights = resize_weights(in_h, out_h).astype(work)
        n, _, w, c = result.shape
        result = settle(np.matmul(weights, result.reshape(n, in_h, w * c)).reshape(n, out_h, w, c))
    result = result.astype(np.uint8) if is_uint8 else result.astype(images.dtype)
    return result[0] if single else result


def degrade(hr_faces: np.ndarray, size: int = LR_SIZE) -> np.ndarray:
    """Low-resolution version of aligned faces: antialiased bicubic down to ``size``×``size``."""
    return resize(hr_faces, size)
