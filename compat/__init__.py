"""Lightning compatibility: a trainer facade for stock Lightning callbacks and busloop
re-implementations of the Lightning callbacks people use (empty for now; see the issues)."""
