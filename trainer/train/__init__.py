"""Training stages (CPT, SFT, alignment) on one skeleton: a new stage is a module here."""
