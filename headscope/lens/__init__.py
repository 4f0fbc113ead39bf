"""Per-head lenses: training-free logit lens (:mod:`.core`), token decoding (:mod:`.decode`),
trained Attention Lenses (:mod:`.store`, :mod:`.train`; Sakarvadia et al. 2023)."""
