def load_arc2face(*a, **k): raise NotImplementedError
