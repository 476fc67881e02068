"""The built-in synthetic cohort: chest radiographs, reports, labels, masks and boxes.

``generate(out_dir, profile, seed, params)`` writes a cohort in the native layouts of MIMIC-CXR +
Chest ImaGenome, PadChest and NIH (see :mod:`cxr.synth.generate`); ``plan_cohort`` plans one
without pixels (:mod:`cxr.synth.cohort`); ``contact_sheet`` draws a preview.
"""

from cxr.synth.cohort import PROFILES, plan_cohort, truth_frame
from cxr.synth.generate import generate, load_truth

__all__ = ["PROFILES", "generate", "load_truth", "plan_cohort", "truth_frame"]
