"""Every study of the COCO-EF paper in one run, with one report.

Question: do the comparisons the COCO-EF paper (Li, Xiao, Skoglund, arXiv 2603.16353)
and its predecessors make hold on this engine: COCO-EF against every baseline in
iterations, bits and time; against the straggling probability, the compression level,
the redundancy and the compressor; its advantage map; the quantities of its analysis;
and on neural networks?

Expected: see each section. In short: with a code and error feedback, biased
compression (top-k) matches uncompressed gradient coding per iteration up to a small
floor while uploading about ten times fewer bits, and beats biased compression without
feedback, unbiased compression and uncoded error feedback.

The quick variant (16 devices, small problems) finishes in under 10 minutes on a 2-core
CPU; the full variant uses 100 devices, the scale of the COCO-EF paper, and is sized
for a GPU.

Command: coco-jax run experiments/paper.py --quick   (full: without --quick, a GPU)
"""

from coco_jax.experiment import compose_figures, compose_grids

NAME = "paper"
DESCRIPTION = "all experiments in one run and one report (full variant: 100 devices)"
PARTS = (
    "methods",
    "straggler_prob",
    "compression",
    "redundancy",
    "compressors",
    "heatmap",
    "theory",
    "neural",
)


def grid(quick: bool = False):
    return compose_grids(PARTS, quick, here=__file__)


def figures(df):
    return compose_figures(PARTS, df, here=__file__)
