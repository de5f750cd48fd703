"""IDiff-Face latent diffusion (IDiff-Face, UIFace, IDperturb, NegFaceDiff): one family, one folder."""
