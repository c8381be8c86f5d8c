"""Building blocks of the decoder: norms, rotary embedding, paged attention, sampler."""
