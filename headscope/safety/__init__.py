"""Safety-head helpers (Zhou et al. 2024): ablations (:mod:`.ablation`), refusal detection
(:mod:`.refusal`) and the behavioural refusal check (:mod:`.check`)."""
