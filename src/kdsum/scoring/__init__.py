"""Scoring: ROUGE on Kiwi morphemes, bit-for-bit rouge_score's, with a morpheme cache and bootstrap intervals."""
