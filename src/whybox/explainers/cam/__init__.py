"""CAM family: a template base and one small file per variant."""

from whybox.explainers.cam.base import CAM
from whybox.explainers.cam.gradcam import GradCAM
from whybox.explainers.cam.gradcam_pp import GradCAMPlusPlus
from whybox.explainers.cam.hirescam import HiResCAM
from whybox.explainers.cam.layercam import LayerCAM
from whybox.explainers.cam.scorecam import ScoreCAM
from whybox.explainers.cam.xgradcam import XGradCAM

__all__ = ["CAM", "GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "ScoreCAM", "XGradCAM"]
