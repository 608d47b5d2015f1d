import numpy as np
import torch

from rcnn_cli.boxes import box_problems, decode, encode, iou_matrix, valid_box_mask, voc_iou


def test_voc_iou_counts_both_end_pixels():
    # Boxes [0,0,9,9] and [5,0,14,9]: 10x10 each (+1), overlap 5x10 = 50, union 150.
    iou = voc_iou(np.array([0, 0, 9, 9]), np.array([[5, 0, 14, 9]]))
    assert iou[0] == 50 / 150
    # The continuous IoU of the same numbers differs: overlap 4x9=36, union 81+81-36=126.
    assert np.isclose(iou_matrix([[0, 0, 9, 9]], [[5, 0, 14, 9]])[0, 0], 36 / 126)


def test_iou_matrix_shapes_and_empty():
    assert iou_matrix(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    m = iou_matrix([[0, 0, 10, 10], [0, 0, 5, 5]], [[0, 0, 10, 10]])
    assert np.allclose(m[:, 0], [1.0, 0.25])


def test_encode_matches_rcnn_formula_and_decode_inverts():
    p = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # w=40 h=80, centre (30, 60)
    g = torch.tensor([[14.0, 12.0, 74.0, 92.0]])   # w=60 h=80, centre (44, 52)
    t = encode(g, p)
    expected = [(44 - 30) / 40, (52 - 60) / 80, np.log(60 / 40), np.log(80 / 80)]
    assert torch.allclose(t[0], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    # Fast R-CNN's normalisation by stds (0.1, 0.1, 0.2, 0.2) = weights (10, 10, 5, 5).
    t2 = encode(g, p, weights=(10, 10, 5, 5))
    assert torch.allclose(t2[0], t[0] * torch.tensor([10.0, 10, 5, 5]), atol=1e-5)
    assert torch.allclose(decode(t2, p, weights=(10, 10, 5, 5)), g, atol=1e-4)


def test_decode_class_specific_deltas():
    p = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0]])  # two classes
    out = decode(deltas, p).reshape(1, 2, 4)
    assert torch.allclose(out[0, 0], p[0])
    assert torch.allclose(out[0, 1], torch.tensor([1.0, 0.0, 11.0, 10.0]))


def test_bad_box_policy():
    boxes = np.array([[5, 5, 5, 9], [9, 5, 3, 9], [-5, -5, 10, 10], [200, 200, 210, 210], [1, 1, 20, 20]], float)
    problems = box_problems(boxes, 100, 100)
    assert (0, "zero-area") in problems and (1, "inverted") in problems
    assert (2, "out-of-image") in problems and (3, "out-of-image") in problems
    assert not any(i == 4 for i, _ in problems)
    # Training keeps the box reaching past the border (it is clipped later), drops the others.
    assert valid_box_mask(boxes, 100, 100).tolist() == [False, False, True, False, True]


def test_yolo_box_conversion_by_hand_and_back():
    from rcnn_cli.boxes import from_yolo_boxes, to_yolo_boxes

    boxes = np.array([[10, 20, 50, 60], [0, 0, 200, 100]], np.float32)
    yolo = to_yolo_boxes(boxes, 200, 100)
    np.testing.assert_allclose(yolo, [[0.15, 0.4, 0.2, 0.4], [0.5, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(from_yolo_boxes(yolo, 200, 100), boxes, atol=1e-5)


def test_vote_boxes_keeps_one_box_per_cluster_at_the_score_weighted_mean():
    from rcnn_cli.boxes import vote_boxes

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.1, 0.5, 0.3], np.float32)
    classes = np.array([0, 0, 1, 0])
    kept, s, c = vote_boxes(boxes, scores, classes, iou=0.5)  # IoU of the first two: 81 / 119 = 0.68
    assert c.tolist() == [0, 1, 0] and np.allclose(s, [0.9, 0.5, 0.3])
    np.testing.assert_allclose(kept[0], [0.1, 0.1, 10.1, 10.1], atol=1e-6)  # 0.9 x box 0 + 0.1 x box 1
    np.testing.assert_allclose(kept[1:], boxes[[2, 3]])  # another class, and a lone box: unchanged
    kept, s, c = vote_boxes(boxes, scores, classes, iou=0.7)  # 0.68 < 0.7: no cluster
    assert len(kept) == 4 and np.allclose(kept[0], boxes[0])
