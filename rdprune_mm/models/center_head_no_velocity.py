"""mmdet3d's CenterHead for datasets without velocity (KITTI layout)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from mmdet3d.models.dense_heads import CenterHead
from mmdet3d.registry import MODELS
from mmengine.structures import InstanceData
from torch import Tensor

#: Box code of a target without velocity: center offset (2), z (1), log
#: dimensions (3), sin and cos of the yaw (2).
CODE_SIZE = 8


@MODELS.register_module()
class CenterHeadNoVelocity(CenterHead):
    """``CenterHead`` trained on 7-value boxes, with no ``vel`` head.

    mmdet3d's ``CenterHead`` builds its regression targets and loss for
    nuScenes' 9-value boxes (with velocity) only. This head gives its
    targets zero velocity and drops those two columns again, so its
    ``common_heads`` leave out ``vel`` and ``train_cfg.code_weights`` has 8
    values. Prediction is the parent's: without ``vel`` the coder decodes
    7-value boxes (set ``bbox_coder.code_size=7``). Every argument is
    ``CenterHead``'s.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if 'vel' in self.task_heads[0].heads:
            raise ValueError(
                'CenterHeadNoVelocity predicts no velocity: remove "vel" '
                'from common_heads, or use CenterHead')

    def get_targets_single(self,
                           gt_instances_3d: InstanceData) -> Tuple[Tensor]:
        """The parent's targets of 7-value boxes, without velocity columns.

        Args:
            gt_instances_3d: ``bboxes_3d`` (LiDAR boxes of 7 values) and
                ``labels_3d`` of one sample.

        Returns:
            tuple[list[Tensor]]: Heatmaps, box targets of ``CODE_SIZE``
            values, indices and masks, one of each per task.
        """
        boxes = gt_instances_3d.bboxes_3d
        with_velocity = InstanceData(
            labels_3d=gt_instances_3d.labels_3d,
            bboxes_3d=type(boxes)(torch.cat(
                [boxes.tensor[:, :7],
                 boxes.tensor.new_zeros(len(boxes), 2)],
                dim=1),
                                  box_dim=9,
                                  with_yaw=True))
        heatmaps, anno_boxes, inds, masks = super().get_targets_single(
            with_velocity)
        return heatmaps, [box[:, :CODE_SIZE] for box in anno_boxes], inds, \
            masks

    def loss_by_feat(self, preds_dicts: Tuple[List[dict]],
                     batch_gt_instances_3d: List[InstanceData], *args,
                     **kwargs) -> dict:
        """The parent's loss, with an empty velocity prediction so that its
        concatenation of the regression heads gives ``CODE_SIZE`` values."""
        for preds_dict in preds_dicts:
            reg = preds_dict[0]['reg']
            preds_dict[0]['vel'] = reg.new_zeros(reg.shape[0], 0,
                                                 *reg.shape[2:])
        return super().loss_by_feat(preds_dicts, batch_gt_instances_3d, *args,
                                    **kwargs)
