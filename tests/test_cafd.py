"""CAFD's URFM (METHODS.md 5): its output shapes, and a positional bias that follows the face's landmarks."""
import math

import pytest
import torch

from vidkd.distill.cafd import FACE_TEMPLATE, URFM, face_distances


def test_urfm_gives_l_local_features_and_an_attention_map_per_query():
    urfm = URFM(64, 32, queries=49)
    h, attention = urfm(torch.randn(2, 64, 14, 14))
    assert h.shape == (2, 49, 32) and attention.shape == (2, 49, 14, 14)
    assert torch.allclose(attention.sum((2, 3)), torch.ones(2, 49))
    with pytest.raises(ValueError, match="not a square grid"):
        URFM(64, 32, queries=50)


def test_the_distance_adds_the_pixels_distance_to_the_landmark_nearest_the_centre():
    """Query 0 of a 7 x 7 grid is centred at (1/14, 1/14); the template landmark nearest it is the left eye. Pixel 0
    of a 14 x 14 map is centred at (1/28, 1/28)."""
    eye = (FACE_TEMPLATE[0][0] / 112, FACE_TEMPLATE[0][1] / 112)
    plain = math.hypot(1 / 14 - 1 / 28, 1 / 14 - 1 / 28)
    to_eye = math.hypot(eye[0] - 1 / 28, eye[1] - 1 / 28)
    assert face_distances(49, (14, 14), 0.0)[0, 0].item() == pytest.approx(plain, rel=1e-5)
    assert face_distances(49, (14, 14), 2.0)[0, 0].item() == pytest.approx(plain + 2 * to_eye, rel=1e-5)


def test_the_positional_bias_changes_with_the_landmark_distances():
    """On a map of zeros the features say nothing, so each query's attention is the softmax of its bias row alone.
    With the table falling with the bucket, gamma 0 attends around the query's centre; gamma 1 pulls the attention of
    a query near the left eye towards the eye."""
    def attention(gamma):
        urfm = URFM(8, 16, queries=49, buckets=32, gamma=gamma)
        with torch.no_grad():
            urfm.table.copy_(-torch.arange(32.0))  # nearer: more attention
        return urfm(torch.zeros(1, 8, 28, 28))[1][0]

    plain, face = attention(0.0), attention(1.0)
    assert not torch.allclose(plain, face)
    query = 7 * 2 + 1  # centre (3/14, 5/14) in (x, y): the left eye (0.34, 0.46) is its nearest landmark
    peak = divmod(int(plain[query].argmax()), 28)  # (row, column) of the pixel it attends to most
    assert abs(peak[0] - 10) <= 1 and abs(peak[1] - 6) <= 1  # its own centre: row 5/14 * 28 = 10, column 6
    eye_pixel = (int(FACE_TEMPLATE[0][1] / 112 * 28), int(FACE_TEMPLATE[0][0] / 112 * 28))
    far_pixel = (26, 26)
    gain = face[query] / plain[query]
    assert gain[eye_pixel] > gain[far_pixel]  # the eye gains attention relative to a far pixel
