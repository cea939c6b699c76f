from pobench.registry import register_algorithm

def broken(:
    pass
