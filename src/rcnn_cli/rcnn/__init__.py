"""The classic multistage R-CNN (Girshick et al., 2014), one module per stage:

``proposals`` (selective search, sliding windows, RPN boxes; the proposals store), ``features``
(warped regions with context padding, the features store), ``finetune`` (the backbone on warped
regions, on the one trainer), ``classifiers`` (linear SVMs with hard-negative mining, box ridge
regressors) and ``model`` (the model directory and :class:`~rcnn_cli.rcnn.model.RCNNDetector`).
"""
