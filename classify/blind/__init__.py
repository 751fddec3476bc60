"""A blind real-or-synthetic test for experts: draw the images, write the page and its key, score the answers.

    python -m classify blind-test  --data DATA --synthetic SYN --per-class N [--lora-weights 1.0 0.8] --seed S --output OUT
    python -m classify blind-score --key OUT/key.json --answers a1.json [a2.json ...] --output OUT

The draw is balanced so that guessing scores 50 % overall, per class and per LoRA weight:
for every class c and LoRA weight w it takes `per_class` synthetic images of c from the w trees
and `per_class` real images of c (each real image is used once; real images are split at
random into one block per weight). A block (c, w) holds as many real as synthetic images, so
its rows are exact binomial tests against 0.5.

Files (names written once, in prompts.layout):
    OUT/blind_test.html     one self-contained page: opaque random ids and re-encoded images only
    OUT/key.json            the answer key: id -> real/synthetic, class, cell line, LoRA weight, source file
    OUT/blind_scores.json   scores (blind-score): the summary read back by `load_blind_summary`
    OUT/blind_scores.csv    the per-rater / class / weight table
    OUT/blind_summary.md    the plain reading and the table

The package: `sampling` (the draw), `page` (encoding, equal byte lengths, the Jinja2 page, the
key), `scoring` (reading and checking answers, the scores), `stats` (the statistics, scipy /
scikit-learn / statsmodels), `summary` (what the CV report shows).

Statistics (each tested against hand-computed values):
- accuracy = correct calls / calls (skips excluded), exact Clopper-Pearson 95 % interval,
  one-sided exact binomial p of P(X >= correct | calls, 0.5);
- sensitivity = synthetic images called synthetic, specificity = real images called real;
- d' = z(H) - z(F), H the hit rate (synthetic called synthetic), F the false-alarm rate
  (real called synthetic), both with the log-linear correction of Hautus (1995):
  (count + 0.5) / (trials + 1), applied to every cell so that rates of 0 and 1 stay finite
  and d' is not biased by which cells happen to be extreme;
- agreement between raters on the images each of them called: Cohen's kappa for two,
  Fleiss' kappa for three or more;
- calls needed to detect 60 % accuracy: the smallest n from which on the exact one-sided
  binomial test at alpha 0.05 has power >= 0.8 against a true accuracy of 0.6 (exact power
  saw-tooths with n, so the first n that reaches 0.8 is not enough by itself).

Pooling calls of several raters treats them as independent although raters see the same
images; the per-rater rows are exact tests of each rater, the pooled row is a summary.

Scoring checks every answers file against its key: the same test id (a page and its key share
a random id, so a key of another test is refused), ids that are strings of the key, calls
real/synthetic/skip, confidence 1-3 or null, a rater name that is a string. Each rater's
coverage (images answered of the images in the test) is reported; a rater who stopped early
is named, not silently counted as complete.
"""
from .names import *  # noqa: E402,F401,F403
from .page import blind_test, encode_image, equal_lengths, render_page  # noqa: E402,F401
from .sampling import Item, draw_items  # noqa: E402,F401
from .scoring import agreement, blind_score, by_confidence, read_answers, read_key, score  # noqa: E402,F401
from .stats import (  # noqa: E402,F401
    Score,
    binom_p_greater,
    calls_needed,
    clopper_pearson,
    cohen_kappa,
    critical_count,
    detectable_accuracy,
    dprime,
    exact_power,
    fleiss_kappa,
    loglinear_rate,
)
from .summary import BlindSummary, load_blind_summary, plain_reading, summary_from_scores  # noqa: E402,F401
