"""The memory bank (`r2scp build-bank`, DESIGN section 5): what retrieval finds, and how.

keys    key spaces (unified, paired, bind) and the cross-fitted binder that learns `bind`
search  top-k search over keys: hnswlib or exact, never the query's own video
bank    the stage: bank entries, indexes and precomputed neighbour lists, and the Bank reader
"""
