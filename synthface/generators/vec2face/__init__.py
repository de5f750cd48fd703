"""Vec2Face and Vec2Face+: pipeline, model, landmarks, pose, AttrOP, loading, tiny models, and what the family declares (`family`)."""
