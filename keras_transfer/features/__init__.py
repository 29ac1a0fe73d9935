"""Features: the frozen backbone run once and its outputs cached, in memory or in the feature
store on disk, and the fast copies of the backbone that pass uses."""
