"""Building blocks shared by every role. Imports no role package."""
