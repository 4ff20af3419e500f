"""Stock movement prediction from prices and credibility-weighted social posts, ANN vs SNN."""
