"""Arc2Face: its pipeline, ID encoder, loading, tiny model and what the family declares (`family`)."""
