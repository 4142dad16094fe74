"""Figures from shared/data/kg-2021-parliament/FACTS.md that tests compare against.

They are the published facts the replica must reproduce, written down once here.
"""

from __future__ import annotations

REGISTERED = 3_703_420
TOOK_PART_FINAL = 1_281_622
TOOK_PART_PRELIMINARY = 1_182_291
PRECINCTS = 2_494
PRECINCTS_COUNTED_PRELIMINARY = 2_247

# Final result (CEC resolution 836): ballot number -> % of all who took part.
FINAL_SHARES = {21: 17.32, 9: 13.61, 8: 11.00, 3: 8.35, 2: 7.04, 5: 6.17}
FINAL_SEATS = {21: 15, 9: 12, 8: 9, 3: 7, 2: 6, 5: 5}

# Preliminary automatic count, 28 November about 21:30 (90.10% of protocols).
PRELIMINARY_SHARES = {
    1: 3.48, 2: 6.74, 3: 8.23, 4: 0.62, 5: 6.01, 6: 0.62, 7: 0.95, 8: 10.81, 9: 13.50,
    10: 4.01, 11: 1.54, 12: 0.41, 13: 0.44, 14: 3.21, 15: 0.46, 16: 0.96, 17: 2.48,
    18: 4.46, 19: 0.46, 20: 0.71, 21: 16.86,
}  # fmt: skip
PRELIMINARY_AGAINST_ALL = 2.17
PRELIMINARY_PARTIES_SUM = 86.96
