"""Anatomy: Chest ImaGenome scene graphs -> COCO, Faster R-CNN region detector, region features, organ UNet.

* :mod:`cxr.anatomy.coco` - scene graphs -> one standard COCO json per split (boxes in PNG pixels).
* :mod:`cxr.anatomy.detector` - torchvision Faster R-CNN trained with Lightning, COCOeval metrics.
* :mod:`cxr.anatomy.features` - 1024-d box-head features per region (the AnaXNet / CheXtriev input).
* :mod:`cxr.anatomy.masks` - organ-mask reading, mapping into PNG pixels, Dice / IoU.
* :mod:`cxr.anatomy.unet` - segmentation-models-pytorch UNet on organ masks (SegFusion pretraining).
"""
